"""The evaluation run: cloak the dataset once per configuration, embed clean and cloaked faces, measure.

Protocols (also written into the report):
- Verification: for each pair (a, b), photo a stays clean and photo b is cloaked, as when a recogniser
  compares a newly uploaded, cloaked photo with a clean reference photo. A cloaked b in which no face
  is found cannot be matched and counts as "different person". Pairs whose clean photos show no face
  are left out and counted.
- Identification, clustering: see `identification` and `clustering`.
- Transfer: cloaks made with each cloak model alone and with each ensemble mode, verified by each
  evaluation model; a cell is the relative change of accuracy at the evaluation model's threshold.
  With `exclude_evaluated`, an ensemble cloak judged by one of its own members is remade without it.
- Robustness: each pair is verified again after the b photos (clean and cloaked alike) went through
  an upload transform; the protection that remains is the accuracy drop left, as a share of the drop
  without the transform.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np

from ulixes_onnx import __version__
from ulixes_onnx.cards import get_card
from ulixes_onnx.cloaking.files import expand_inputs
from ulixes_onnx.cloaking.pipeline import Cloaker
from ulixes_onnx.cloaking.pool import build_pool, load_pool
from ulixes_onnx.cloaking.settings import DEFAULT_MODELS, ENSEMBLES, CloakSettings
from ulixes_onnx.errors import ModelError
from ulixes_onnx.evaluation import clustering, identification, metrics
from ulixes_onnx.evaluation.cache import (
    CloakCache,
    CloakedPhoto,
    config_description,
    pool_digest,
)
from ulixes_onnx.evaluation.dataset import Dataset
from ulixes_onnx.evaluation.embeddings import FaceEmbedder
from ulixes_onnx.evaluation.uploads import UPLOAD_TRANSFORMS
from ulixes_onnx.face_model import FaceModel
from ulixes_onnx.faces import detector_from_store
from ulixes_onnx.photos.decoding import read_photo
from ulixes_onnx.store import ModelStore

Embeddings = dict[str, np.ndarray] | None
VERSIONED_PACKAGES = (
    "numpy",
    "onnx",
    "onnxruntime",
    "opencv-python-headless",
    "pillow",
    "scikit-learn",
)
LEAVE_ONE_OUT_PROTOCOL = (
    "for each evaluation model, photo b of every pair is cloaked by the ensemble of all the other "
    "evaluation models and judged by the left-out model, as a recogniser the cloak never saw would "
    "judge it; 'best_threshold' is the accuracy of an attacker who picks the threshold on the cloaked "
    "pairs themselves"
)
PROTOCOLS = {
    "verification": (
        "photo a of each pair stays clean, photo b is cloaked; a pair is judged the same person when "
        "the distance between the largest faces' embeddings is below the model's threshold; a cloaked "
        "b with no detectable face counts as a different person; pairs whose clean photos show no face "
        "are left out"
    ),
    "identification": (
        "classifiers are trained on clean photos and tested on photos not trained on, clean and then "
        "cloaked; every photo of the identities with two or more photos is tested once (folds dealt "
        "round-robin within each identity); a cloaked photo with no detectable face counts as wrong"
    ),
    "clustering": (
        f"{clustering.LINKAGE}-linkage agglomerative clustering stopped at the model's threshold or at "
        "the true number of identities, with 0/10/50/100 % of the photos replaced by their cloaked "
        f"copies ({clustering.REPEATS} random draws for 10 and 50 %); accuracy as in the paper: "
        "majority identity per cluster, clusters of one photo excluded, weighted by cluster size; "
        "cloaked copies with no detectable face are left out"
    ),
    "transfer": (
        "rows: cloak configurations, columns: evaluation models; a cell is the relative change of "
        "verification accuracy at the evaluation model's threshold, cloaked b against clean"
    ),
    "robustness": (
        "the b photos, clean and cloaked, are re-encoded as JPEG at quality 85 and 75 or downscaled by "
        "0.5 before faces are found; protection remaining = accuracy drop after the transform / "
        "accuracy drop without it"
    ),
}


class ProgressListener(Protocol):
    """Receives progress: a stage with its number of items, then one call per item done."""

    def stage(self, description: str, total: int) -> None: ...

    def advance(self, item: str) -> None: ...


class _Silent:
    def stage(self, description: str, total: int) -> None:
        pass

    def advance(self, item: str) -> None:
        pass


@dataclass(frozen=True)
class EvaluationSettings:
    """What to measure: evaluation models, the main cloak configuration and the optional parts."""

    models: tuple[str, ...] = DEFAULT_MODELS
    cloak: CloakSettings = field(default_factory=CloakSettings)
    transfer: bool = True
    exclude_evaluated: bool = False
    leave_one_out: bool = False
    robustness: bool = True
    pool: Path | None = None
    threads: int | None = None


def transfer_rows(cloak: CloakSettings) -> list[CloakSettings]:
    """Each cloak model alone, then (for several models) the ensemble in every mode."""
    rows = [replace(cloak, models=(name,)) for name in cloak.models]
    if len(cloak.models) > 1:
        rows += [replace(cloak, ensemble=mode) for mode in ENSEMBLES]
    return rows


def leave_one_out_rows(cloak: CloakSettings, judges: tuple[str, ...]) -> dict[str, CloakSettings]:
    """For each evaluation model, the cloak made by all the other evaluation models (`cloak`'s other
    settings, its ensemble mode among them): what that model sees of cloaks it never took part in."""
    if len(judges) < 2:
        raise ModelError("leave-one-out needs at least two evaluation models (--models a,b,...)")
    return {judge: replace(cloak, models=tuple(m for m in judges if m != judge)) for judge in judges}


def excluding(row: CloakSettings, evaluated: str) -> CloakSettings | None:
    """The row's configuration without the evaluated model (None if nothing is left)."""
    remaining = tuple(name for name in row.models if name != evaluated)
    return replace(row, models=remaining) if remaining else None


def check_models(settings: EvaluationSettings) -> None:
    """Every named model must be a known face-embedding model, before any work starts."""
    for name in dict.fromkeys(settings.models + settings.cloak.models):
        if get_card(name).kind != "embedding":
            raise ModelError(
                f"model {name!r} is a detector, not a face-embedding model; name embedding models"
            )


class Evaluation:
    """One evaluation of a dataset (see the module docstring); `run()` returns the report document."""

    def __init__(
        self,
        dataset: Dataset,
        settings: EvaluationSettings,
        store: ModelStore,
        cache_dir: Path,
        progress: ProgressListener | None = None,
    ) -> None:
        check_models(settings)
        self.dataset = dataset
        self.settings = settings
        self.store = store
        self.cache_dir = cache_dir
        self.progress = progress or _Silent()
        self.models = [FaceModel(name, store, threads=settings.threads) for name in settings.models]
        self.embedder = FaceEmbedder(detector_from_store(store), self.models)
        self._caches: dict[CloakSettings, CloakCache] = {}
        self._cloaked: dict[CloakSettings, dict[str, CloakedPhoto]] = {}
        self._embedded: dict[CloakSettings, dict[str, Embeddings]] = {}
        self.clean: dict[str, Embeddings] = {}

    def run(self) -> dict:
        if self.settings.leave_one_out:
            return self._run_leave_one_out()
        started = time.perf_counter()
        dataset, cloak = self.dataset, self.settings.cloak
        photos = sorted(dataset.photos)
        second_photos = sorted({pair.b for pair in dataset.pairs})
        jobs = {cloak: photos}
        for config in self._transfer_configs():
            jobs.setdefault(config, second_photos)
        self._cloak_all(jobs)
        cloak_seconds = time.perf_counter() - started

        self.progress.stage("measuring", len(photos) + sum(len(names) for names in jobs.values()))
        self.clean = {name: self._embed_file(dataset.path(name), name) for name in photos}
        for config, names in jobs.items():
            self._embedded[config] = {
                name: self._embed_file(self._cloaked[config][name].path, name) for name in names
            }
        document = {
            "tool": self._versions(),
            "dataset": self._dataset_section(),
            "protocols": PROTOCOLS,
            "cloak": self._cloak_section(),
            "models": self._models_section(),
            "verification": {model.name: self._verification_section(model) for model in self.models},
            "perceptibility": self._perceptibility_section(),
        }
        self.progress.stage("identification and clustering", 2 * len(self.models))
        document["identification"] = {}
        document["clustering"] = {}
        for model in self.models:
            document["identification"][model.name] = self._identification_section(model)
            self.progress.advance(model.name)
            document["clustering"][model.name] = self._clustering_section(model)
            self.progress.advance(model.name)
        if self.settings.transfer:
            document["transfer"] = self._transfer_section()
        if self.settings.robustness:
            document["robustness"] = self._robustness_section(second_photos)
        document["timing"] = {
            "cloaking_seconds": round(cloak_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
        }
        return document

    def _run_leave_one_out(self) -> dict:
        """Only the clean photos and, per evaluation model, the b photos cloaked by the others."""
        started = time.perf_counter()
        photos = sorted(self.dataset.photos)
        second_photos = sorted({pair.b for pair in self.dataset.pairs})
        rows = leave_one_out_rows(self.settings.cloak, self.settings.models)
        jobs = {config: second_photos for config in rows.values()}
        self._cloak_all(jobs)
        cloak_seconds = time.perf_counter() - started
        self.progress.stage("measuring", len(photos) + sum(len(names) for names in jobs.values()))
        self.clean = {name: self._embed_file(self.dataset.path(name), name) for name in photos}
        for config, names in jobs.items():
            self._embedded[config] = {
                name: self._embed_file(self._cloaked[config][name].path, name) for name in names
            }
        return {
            "tool": self._versions(),
            "dataset": self._dataset_section(),
            "protocols": {"verification": PROTOCOLS["verification"], "leave_one_out": LEAVE_ONE_OUT_PROTOCOL},
            "cloak": {"config": asdict(self.settings.cloak)},
            "models": self._models_section(),
            "leave_one_out": {
                model.name: self._held_out_section(model, rows[model.name]) for model in self.models
            },
            "timing": {
                "cloaking_seconds": round(cloak_seconds, 2),
                "total_seconds": round(time.perf_counter() - started, 2),
            },
        }

    def _models_section(self) -> dict:
        return {
            model.name: {"metric": model.metric, "threshold": model.threshold, "sha256": model.built.sha256}
            for model in self.models
        }

    def _held_out_section(self, model: FaceModel, config: CloakSettings) -> dict:
        """How one model sees cloaks made without it: verification at its threshold and at the best
        threshold an attacker could pick on cloaked pairs, and how visible those cloaks are."""
        clean = self._verify(model, self.clean.__getitem__)
        cloaked = self._verify(model, self._embedded[config].__getitem__)
        faces = [
            face for result in self._cloaked[config].values() for face in result.faces if face.skipped is None
        ]
        scores = [face.ssimulacra2 for face in faces]
        return {
            "cloaked_with": config.label,
            "clean": _verification_json(clean),
            "cloaked": _verification_json(cloaked),
            "same_pair_distance": {
                "clean": self._same_pair_distances(model, self.clean.__getitem__),
                "cloaked": self._same_pair_distances(model, self._embedded[config].__getitem__),
            },
            "face_ssimulacra2": {
                **metrics.summary(scores),
                "p5": float(np.percentile(scores, 5)) if scores else None,
            },
            "faces_protected_by_the_cloaking_models": sum(face.protected for face in faces),
            "faces": len(faces),
        }

    # Cloaking and embedding.

    def _transfer_configs(self) -> list[CloakSettings]:
        if not self.settings.transfer:
            return []
        configs = []
        for row in transfer_rows(self.settings.cloak):
            if self.settings.exclude_evaluated and len(row.models) > 1:
                configs += [config for m in self.models if (config := excluding(row, m.name)) is not None]
            else:
                configs.append(row)
        return configs

    def _cache(self, config: CloakSettings) -> CloakCache:
        if config not in self._caches:
            cloaker = Cloaker(config, store=self.store, threads=self.settings.threads)
            if self.settings.pool is not None:
                cloaker.pool = (
                    load_pool(self.settings.pool, cloaker.models)
                    if self.settings.pool.is_file()
                    else build_pool(
                        [photo.path for photo in expand_inputs([str(self.settings.pool)])],
                        cloaker.models,
                        cloaker.detector,
                    )
                )
            description = config_description(config, cloaker, self.store, pool_digest(cloaker.pool))
            self._caches[config] = CloakCache(self.cache_dir, cloaker, description)
        return self._caches[config]

    def _cloak_all(self, jobs: dict[CloakSettings, list[str]]) -> None:
        self.progress.stage("cloaking", sum(len(names) for names in jobs.values()))
        for config, names in jobs.items():
            cache = self._cache(config)
            results = {}
            for name in names:
                results[name] = cache.get(name, self.dataset.path(name))
                self.progress.advance(f"{config.label}: {name}")
            self._cloaked[config] = results

    def _embed_file(self, path: Path | None, name: str) -> Embeddings:
        self.progress.advance(name)
        if path is None:
            return None
        return self.embedder.embed(read_photo(path).rgb8)

    # Report sections.

    def _versions(self) -> dict:
        versions = {"ulixes-onnx": __version__, "python": platform.python_version()}
        for package in VERSIONED_PACKAGES:
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                versions[package] = None
        return versions

    def _dataset_section(self) -> dict:
        dataset = self.dataset
        no_face = sorted(name for name, found in self.clean.items() if found is None)
        return {
            "root": str(dataset.root.resolve()),
            "photos": len(dataset.photos),
            "identities": len(dataset.identities),
            "pairs_same": sum(pair.same for pair in dataset.pairs),
            "pairs_different": sum(not pair.same for pair in dataset.pairs),
            "single_photo_identities": list(dataset.single_photo_identities),
            "photos_without_face": no_face,
            "pairs_left_out_no_face": sum(
                self.clean[pair.a] is None or self.clean[pair.b] is None for pair in dataset.pairs
            ),
        }

    def _cloak_section(self) -> dict:
        config = self.settings.cloak
        cache = self._caches[config]
        results = self._cloaked[config].values()
        faces = [face for result in results for face in result.faces]
        statuses = [result.status for result in results]
        return {
            "label": config.label,
            "config": asdict(config),
            "resolved": cache.description,
            "cache": str(cache.directory),
            "photos": len(statuses),
            "protected_photos": statuses.count("protected"),
            "not_protected_photos": statuses.count("not protected"),
            "photos_without_face": statuses.count("no face"),
            "errors": {result.photo: result.error for result in results if result.error},
            "faces": len(faces),
            "faces_protected": sum(face.protected for face in faces),
            "faces_too_small": sum(face.skipped is not None for face in faces),
            "seconds_per_photo": metrics.summary([result.seconds for result in results]),
        }

    def _pair_distances(
        self, model: FaceModel, second: Callable[[str], Embeddings]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances of the usable pairs, photo a clean against `second(b)` (+inf without a face)."""
        distances, same = [], []
        for pair in self.dataset.pairs:
            first = self.clean[pair.a]
            if first is None or self.clean[pair.b] is None:
                continue
            other = second(pair.b)
            distances.append(
                float(model.distance(first[model.name], other[model.name])) if other is not None else np.inf
            )
            same.append(pair.same)
        return np.array(distances), np.array(same, bool)

    def _verify(self, model: FaceModel, second: Callable[[str], Embeddings]) -> metrics.VerificationResult:
        distances, same = self._pair_distances(model, second)
        return metrics.verify(distances, same, model.threshold, model.metric)

    def _same_pair_distances(self, model: FaceModel, second: Callable[[str], Embeddings]) -> dict:
        """Summary of the same-person pairs' distances: how far cloaks push a face past the threshold."""
        distances, same = self._pair_distances(model, second)
        return metrics.summary(distances[same].tolist())

    def _verification_section(self, model: FaceModel) -> dict:
        cloaked = self._embedded[self.settings.cloak]
        clean = self._verify(model, self.clean.__getitem__)
        protected = self._verify(model, cloaked.__getitem__)
        return {
            "pairs": clean.at_threshold.tp
            + clean.at_threshold.fn
            + clean.at_threshold.tn
            + clean.at_threshold.fp,
            "cloaked_without_face": sum(
                cloaked[name] is None for name in cloaked if self.clean[name] is not None
            ),
            "clean": _verification_json(clean),
            "cloaked": _verification_json(protected),
            "same_pair_distance": {
                "clean": self._same_pair_distances(model, self.clean.__getitem__),
                "cloaked": self._same_pair_distances(model, cloaked.__getitem__),
            },
            "accuracy_change": metrics.relative_change(
                clean.at_threshold.accuracy, protected.at_threshold.accuracy
            ),
            "roc": {
                "thresholds": {
                    "start": 0.0,
                    "stop": float(clean.thresholds[-1]),
                    "step": metrics.THRESHOLD_STEP,
                },
                "clean": {"tp_rate": _rounded(clean.tp_rates), "fp_rate": _rounded(clean.fp_rates)},
                "cloaked": {"tp_rate": _rounded(protected.tp_rates), "fp_rate": _rounded(protected.fp_rates)},
            },
        }

    def _perceptibility_section(self) -> dict:
        results = self._cloaked[self.settings.cloak].values()
        faces = [(result.photo, face) for result in results for face in result.faces if face.skipped is None]
        scores = [face.ssimulacra2 for _, face in faces]
        return {
            # The most visible faces matter most: a cloak that shows on a few faces shows.
            "face_ssimulacra2": {
                **metrics.summary(scores),
                "p5": float(np.percentile(scores, 5)) if scores else None,
            },
            "faces": [
                {
                    "photo": photo,
                    "box": list(face.box),
                    "ssimulacra2": round(face.ssimulacra2, 2),
                    "dssim": round(face.dssim, 6),
                }
                for photo, face in faces
            ],
            "face_dssim": metrics.summary([face.dssim for _, face in faces]),
            "face_dssim_values": [round(face.dssim, 6) for _, face in faces],
            "face_psnr_db": metrics.summary([face.psnr for _, face in faces]),
            "photo_psnr_db": metrics.summary([result.psnr for result in results if result.psnr is not None]),
        }

    def _usable(self) -> tuple[list[str], np.ndarray, list[str]]:
        """Photos with a clean face, whether a face was found in each cloaked copy, their identities."""
        names = [name for name in sorted(self.clean) if self.clean[name] is not None]
        cloaked = self._embedded[self.settings.cloak]
        found = np.array([cloaked[name] is not None for name in names], bool)
        identities = [self.dataset.photos[name] for name in names]
        return names, found, identities

    def _stacked(self, model: FaceModel, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        cloaked = self._embedded[self.settings.cloak]
        clean = np.stack([self.clean[name][model.name] for name in names])
        protected = np.stack(
            [
                cloaked[name][model.name] if cloaked[name] is not None else self.clean[name][model.name]
                for name in names
            ]
        )
        return clean, protected

    def _identification_section(self, model: FaceModel) -> dict:
        names, found, identities = self._usable()
        counts = {identity: identities.count(identity) for identity in identities}
        keep = [counts[identity] >= 2 for identity in identities]
        names = [name for name, k in zip(names, keep, strict=True) if k]
        found = found[np.array(keep, bool)]
        identities = [identity for identity, k in zip(identities, keep, strict=True) if k]
        left_out = sorted({identity for identity, count in counts.items() if count < 2})
        if len(set(identities)) < 2:
            return {
                "skipped": "fewer than two identities have two or more photos with a face",
                "left_out_identities": left_out,
            }
        clean, protected = self._stacked(model, names)
        scores = identification.identify(
            clean,
            protected,
            found,
            identities,
            metric=model.metric,
            threshold=model.threshold,
            seed=self.settings.cloak.seed,
        )
        return {
            "identities": len(set(identities)),
            "photos": len(names),
            "folds": int(identification.round_robin_folds(identities).max() + 1),
            "left_out_identities": left_out,
            "classifiers": {
                name: {
                    "description": identification.CLASSIFIER_NAMES[name],
                    "clean": score.clean,
                    "cloaked": score.cloaked,
                    "change": metrics.relative_change(score.clean, score.cloaked),
                }
                for name, score in scores.items()
            },
        }

    def _clustering_section(self, model: FaceModel) -> dict:
        names, found, identities = self._usable()
        clean, protected = self._stacked(model, names)
        section = {"photos": len(names), "identities": len(set(identities))}
        for stop, true_count in (("distance_stop", False), ("true_clusters", True)):
            rows = {}
            for fraction in clustering.CLOAKED_FRACTIONS:
                masks = clustering.cloak_masks(
                    len(names), fraction, clustering.REPEATS, self.settings.cloak.seed
                )
                outcomes = [
                    clustering.cluster_mixture(
                        clean,
                        protected,
                        found,
                        identities,
                        mask,
                        metric=model.metric,
                        distance=model.threshold,
                        true_count=true_count,
                    )
                    for mask in masks
                ]
                accuracies = [outcome.accuracy for outcome in outcomes if outcome.accuracy is not None]
                rows[f"{round(fraction * 100)}%"] = {
                    "accuracy": float(np.mean(accuracies)) if accuracies else None,
                    "accuracy_std": float(np.std(accuracies)) if accuracies else None,
                    "repeats": len(outcomes),
                    "clusters": float(np.mean([outcome.clusters for outcome in outcomes])),
                    "singletons": float(np.mean([outcome.singletons for outcome in outcomes])),
                    "photos": float(np.mean([outcome.photos for outcome in outcomes])),
                }
            baseline = rows["0%"]["accuracy"]
            for row in rows.values():
                row["change"] = (
                    metrics.relative_change(baseline, row["accuracy"])
                    if baseline is not None and row["accuracy"] is not None
                    else None
                )
            section[stop] = rows
        return section

    def _transfer_section(self) -> dict:
        rows = transfer_rows(self.settings.cloak)
        cells = []
        for row in rows:
            line = []
            for model in self.models:
                config = row
                if self.settings.exclude_evaluated and len(row.models) > 1:
                    config = excluding(row, model.name)
                if config is None:
                    line.append(None)
                    continue
                clean = self._verify(model, self.clean.__getitem__).at_threshold.accuracy
                cloaked = self._verify(model, self._embedded[config].__getitem__).at_threshold.accuracy
                line.append(
                    {
                        "cloaked_with": config.label,
                        "clean_accuracy": clean,
                        "cloaked_accuracy": cloaked,
                        "change": metrics.relative_change(clean, cloaked),
                    }
                )
            cells.append(line)
        return {
            "rows": [row.label for row in rows],
            "columns": [model.name for model in self.models],
            "exclude_evaluated": self.settings.exclude_evaluated,
            "cells": cells,
        }

    def _robustness_section(self, second_photos: list[str]) -> dict:
        cloaked = self._cloaked[self.settings.cloak]
        self.progress.stage("robustness", len(second_photos) * len(UPLOAD_TRANSFORMS))
        transformed: dict[str, dict[str, tuple[Embeddings, Embeddings]]] = {t: {} for t in UPLOAD_TRANSFORMS}
        for name in second_photos:
            clean_rgb = read_photo(self.dataset.path(name)).rgb if self.clean[name] is not None else None
            path = cloaked[name].path
            cloaked_rgb = read_photo(path).rgb if path is not None and clean_rgb is not None else None
            for label, transform in UPLOAD_TRANSFORMS.items():
                transformed[label][name] = (
                    self.embedder.embed(transform(clean_rgb)) if clean_rgb is not None else None,
                    self.embedder.embed(transform(cloaked_rgb)) if cloaked_rgb is not None else None,
                )
                self.progress.advance(f"{label}: {name}")
        section = {}
        for model in self.models:
            base_clean = self._verify(model, self.clean.__getitem__).at_threshold
            base_cloaked = self._verify(model, self._embedded[self.settings.cloak].__getitem__).at_threshold
            rows = {}
            for label, embeddings in transformed.items():
                seen_clean, seen_cloaked = _side(embeddings, 0), _side(embeddings, 1)
                clean = self._verify(model, seen_clean).at_threshold
                protected = self._verify(model, seen_cloaked).at_threshold
                drop = base_clean.accuracy - base_cloaked.accuracy
                rows[label] = {
                    "clean": _confusion_json(clean),
                    "cloaked": _confusion_json(protected),
                    "same_pair_distance": {
                        "clean": self._same_pair_distances(model, seen_clean),
                        "cloaked": self._same_pair_distances(model, seen_cloaked),
                    },
                    "protection_remaining": (clean.accuracy - protected.accuracy) / drop
                    if drop > 0
                    else None,
                    "clean_without_face": sum(
                        e[0] is None for n, e in embeddings.items() if self.clean[n] is not None
                    ),
                    "cloaked_without_face": sum(
                        e[1] is None for n, e in embeddings.items() if self.clean[n] is not None
                    ),
                }
            section[model.name] = rows
        return section


def _side(embeddings: dict[str, tuple[Embeddings, Embeddings]], index: int) -> Callable[[str], Embeddings]:
    """Look-up of the transformed clean (0) or cloaked (1) embeddings of a photo."""
    return lambda name: embeddings[name][index]


def _confusion_json(result: metrics.VerificationAtThreshold) -> dict:
    return {
        "threshold": result.threshold,
        "tp": result.tp,
        "fn": result.fn,
        "tn": result.tn,
        "fp": result.fp,
        "tp_rate": result.tp_rate,
        "fp_rate": result.fp_rate,
        "accuracy": result.accuracy,
    }


def _verification_json(result: metrics.VerificationResult) -> dict:
    return {
        "at_threshold": _confusion_json(result.at_threshold),
        "best_threshold": _confusion_json(result.best),
        "auc": result.auc,
    }


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 5) for v in values]
