"""A random-weight FaceNet saved in both forms of David Sandberg's releases (for test_facenet_casia.py).

Runs in the export toolchain's interpreter, which has TensorFlow (pytest's has not):

    python facenet_tf1_release.py JOB.json

JOB: {"folder": where to write, "seed": int, "repeats": [A, B, C] Inception-ResNet blocks of each kind
(5, 10, 5 in the release), "probe": .npy of NHWC prewhitened chips}.

The graph is InceptionResNetV1 as facenet's train_softmax.py builds it in TensorFlow 1 graph mode (v1
control flow, reference variables): images leave a queue through the identities "image_batch" and
"input"; batch norm (slim's fused batch norm with in-place updates) and dropout choose their training or
inference behaviour with tf.cond on the bool placeholder "phase_train", so the graph holds Switch/Merge
pairs and, for the moving averages, RefSwitch/AssignSub; the bottleneck's L2 normalisation is
"embeddings"; the classifier head of training sits on the bottleneck too. Written to the folder:

- 20180408-102900.pb, frozen as facenet's freeze_graph.py freezes (RefSwitch -> Switch, AssignSub -> Sub,
  variables -> constants, outputs "embeddings" and "label_batch");
- model-20180408-102900.meta and model-20180408-102900.ckpt-90.{index,data-00000-of-00001}, saved as
  facenet's save_variables_and_metagraph saves (the trainable variables and the moving averages; no
  "checkpoint" state file, as in the release zip);
- inference.npy and training.npy: the embeddings of the probe with phase_train False and True;
- other-network.pb: a frozen graph without FaceNet's tensors, as a user might pick up by mistake.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

RELEASE = "20180408-102900"
CHECKPOINT_STEP = 90
IMAGE_SIZE = 160
EMBEDDING_SIZE = 512
CLASSES = 10  # of the training head, which the embedding does not use
BN_DECAY = 0.995
BN_EPSILON = 0.001
KEEP_PROBABILITY = 0.8
RESIDUAL_SCALES = (0.17, 0.10, 0.20)

# Branches of the residual blocks: (filters, kernel, scope) per convolution.
BLOCK35 = [
    [(32, 1, "Conv2d_1x1")],
    [(32, 1, "Conv2d_0a_1x1"), (32, 3, "Conv2d_0b_3x3")],
    [(32, 1, "Conv2d_0a_1x1"), (32, 3, "Conv2d_0b_3x3"), (32, 3, "Conv2d_0c_3x3")],
]
BLOCK17 = [
    [(128, 1, "Conv2d_1x1")],
    [(128, 1, "Conv2d_0a_1x1"), (128, (1, 7), "Conv2d_0b_1x7"), (128, (7, 1), "Conv2d_0c_7x1")],
]
BLOCK8 = [
    [(192, 1, "Conv2d_1x1")],
    [(192, 1, "Conv2d_0a_1x1"), (192, (1, 3), "Conv2d_0b_1x3"), (192, (3, 1), "Conv2d_0c_3x1")],
]


class Network:
    """Layers that switch on `phase_train`, recording every batch norm's statistics."""

    def __init__(self, phase_train: tf.Tensor) -> None:
        self.phase_train = phase_train
        # (moving mean, moving variance, batch mean, batch variance) of each batch norm
        self.statistics: list[tuple[tf.Variable, tf.Variable, tf.Tensor, tf.Tensor]] = []

    def batch_norm(self, x: tf.Tensor) -> tf.Tensor:
        """slim.batch_norm (fused, scale=False, updates_collections=None) with a tensor is_training."""
        channels = x.shape[-1]
        with v1.variable_scope("BatchNorm"):
            beta = v1.get_variable("beta", [channels], initializer=v1.random_normal_initializer(0, 0.1))
            moving_mean = v1.get_variable(
                "moving_mean", [channels], initializer=v1.zeros_initializer(), trainable=False
            )
            moving_variance = v1.get_variable(
                "moving_variance", [channels], initializer=v1.ones_initializer(), trainable=False
            )
            images = tf.reshape(x, [-1, 1, 1, channels]) if x.shape.rank == 2 else x
            gamma = tf.ones([channels])
            normalised, mean, variance = tf.cond(
                self.phase_train,
                lambda: v1.nn.fused_batch_norm(images, gamma, beta, epsilon=BN_EPSILON),
                lambda: v1.nn.fused_batch_norm(
                    images, gamma, beta, moving_mean, moving_variance, BN_EPSILON, is_training=False
                ),
            )

            def update_moving_averages() -> tf.Tensor:
                updates = [
                    v1.assign_sub(moving, (moving - batch) * (1 - BN_DECAY))
                    for moving, batch in ((moving_mean, mean), (moving_variance, variance))
                ]
                with tf.control_dependencies(updates):
                    return tf.identity(normalised)

            normalised = tf.cond(self.phase_train, update_moving_averages, lambda: normalised)
            self.statistics.append((moving_mean, moving_variance, mean, variance))
            return tf.reshape(normalised, tf.shape(x)) if x.shape.rank == 2 else normalised

    def conv(
        self,
        x: tf.Tensor,
        filters: int,
        kernel: int | tuple[int, int],
        scope: str,
        *,
        stride: int = 1,
        padding: str = "SAME",
        batch_norm: bool = True,
        relu: bool = True,
    ) -> tf.Tensor:
        """slim.conv2d: batch norm instead of a bias (or a bias without it), then ReLU."""
        height, width = (kernel, kernel) if isinstance(kernel, int) else kernel
        shape = [height, width, x.shape[-1], filters]
        with v1.variable_scope(scope):
            # He-normal: random features keep about unit scale through the ReLUs.
            initializer = v1.random_normal_initializer(0, np.sqrt(2 / np.prod(shape[:3])))
            y = tf.nn.conv2d(x, v1.get_variable("weights", shape, initializer=initializer), stride, padding)
            if batch_norm:
                y = self.batch_norm(y)
            else:
                biases = v1.get_variable(
                    "biases", [filters], initializer=v1.random_normal_initializer(0, 0.1)
                )
                y = tf.nn.bias_add(y, biases)
            return tf.nn.relu(y) if relu else y

    def residual(
        self, x: tf.Tensor, branches: list, scale: float, scope: str, *, relu: bool = True
    ) -> tf.Tensor:
        """An Inception-ResNet block: parallel branches, concatenated, projected, scaled and added."""
        with v1.variable_scope(scope):
            outputs = []
            for index, branch in enumerate(branches):
                with v1.variable_scope(f"Branch_{index}"):
                    y = x
                    for filters, kernel, name in branch:
                        y = self.conv(y, filters, kernel, name)
                    outputs.append(y)
            mixed = tf.concat(outputs, axis=3)
            up = self.conv(mixed, x.shape[-1], 1, "Conv2d_1x1", batch_norm=False, relu=False)
            y = x + scale * up
            return tf.nn.relu(y) if relu else y

    def reduction_a(self, x: tf.Tensor) -> tf.Tensor:
        with v1.variable_scope("Mixed_6a"):
            with v1.variable_scope("Branch_0"):
                a = self.conv(x, 384, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
            with v1.variable_scope("Branch_1"):
                b = self.conv(x, 192, 1, "Conv2d_0a_1x1")
                b = self.conv(b, 192, 3, "Conv2d_0b_3x3")
                b = self.conv(b, 256, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
            with v1.variable_scope("Branch_2"):
                c = tf.nn.max_pool2d(x, 3, 2, "VALID", name="MaxPool_1a_3x3")
            return tf.concat([a, b, c], axis=3)

    def reduction_b(self, x: tf.Tensor) -> tf.Tensor:
        with v1.variable_scope("Mixed_7a"):
            branches = []
            for index, widths in enumerate([(256, 384), (256, 256), (256, 256, 256)]):
                with v1.variable_scope(f"Branch_{index}"):
                    y = self.conv(x, widths[0], 1, "Conv2d_0a_1x1")
                    if len(widths) == 3:
                        y = self.conv(y, widths[1], 3, "Conv2d_0b_3x3")
                    branches.append(self.conv(y, widths[-1], 3, "Conv2d_1a_3x3", stride=2, padding="VALID"))
            with v1.variable_scope("Branch_3"):
                branches.append(tf.nn.max_pool2d(x, 3, 2, "VALID", name="MaxPool_1a_3x3"))
            return tf.concat(branches, axis=3)

    def inception_resnet_v1(self, images: tf.Tensor, repeats: list[int]) -> tf.Tensor:
        """The prelogits (bottleneck) of facenet's models/inception_resnet_v1.py."""
        with v1.variable_scope("InceptionResnetV1"):
            net = self.conv(images, 32, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
            net = self.conv(net, 32, 3, "Conv2d_2a_3x3", padding="VALID")
            net = self.conv(net, 64, 3, "Conv2d_2b_3x3")
            net = tf.nn.max_pool2d(net, 3, 2, "VALID", name="MaxPool_3a_3x3")
            net = self.conv(net, 80, 1, "Conv2d_3b_1x1", padding="VALID")
            net = self.conv(net, 192, 3, "Conv2d_4a_3x3", padding="VALID")
            net = self.conv(net, 256, 3, "Conv2d_4b_3x3", stride=2, padding="VALID")
            stages = [(BLOCK35, "block35", self.reduction_a), (BLOCK17, "block17", self.reduction_b)]
            stages.append((BLOCK8, "block8", None))
            for stage, ((branches, name, reduction), count, scale) in enumerate(
                zip(stages, repeats, RESIDUAL_SCALES, strict=True)
            ):
                with v1.variable_scope("Repeat" if stage == 0 else f"Repeat_{stage}"):
                    for index in range(1, count + 1):
                        net = self.residual(net, branches, scale, f"{name}_{index}")
                if reduction is not None:
                    net = reduction(net)
            net = self.residual(net, BLOCK8, 1.0, "Block8", relu=False)
            with v1.variable_scope("Logits"):
                net = tf.nn.avg_pool2d(net, net.shape[1:3], 1, "VALID", name="AvgPool_1a_8x8")
                # tf.layers.Flatten: the batch from the tensor's shape, the static shape set after.
                flat = tf.reshape(net, tf.stack([tf.shape(net)[0], -1]))
                flat.set_shape([None, int(np.prod(net.shape[1:]))])
                net = tf.cond(
                    self.phase_train,
                    lambda: tf.nn.dropout(flat, rate=1 - KEEP_PROBABILITY),
                    lambda: tf.identity(flat),
                )
            with v1.variable_scope("Bottleneck"):
                fan_in = net.shape[-1]
                initializer = v1.random_normal_initializer(0, np.sqrt(1 / fan_in))
                weights = v1.get_variable("weights", [fan_in, EMBEDDING_SIZE], initializer=initializer)
                return self.batch_norm(tf.matmul(net, weights))


def training_graph(repeats: list[int]) -> Network:
    """facenet's train_softmax.py graph (without its optimiser) in the default graph."""
    batch_size = v1.placeholder(tf.int32, name="batch_size")
    phase_train = v1.placeholder(tf.bool, name="phase_train")
    queue = v1.FIFOQueue(
        1000, [tf.float32, tf.int64], shapes=[(IMAGE_SIZE, IMAGE_SIZE, 3), ()], name="batch_join"
    )
    images = v1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="images")
    labels = v1.placeholder(tf.int64, [None], name="labels")
    queue.enqueue_many([images, labels], name="enqueue_op")
    image_batch, label_batch = queue.dequeue_up_to(batch_size)
    image_batch = tf.identity(tf.identity(image_batch, "image_batch"), "input")
    label_batch = tf.identity(label_batch, "label_batch")
    network = Network(phase_train)
    prelogits = network.inception_resnet_v1(image_batch, repeats)
    with v1.variable_scope("Logits"):
        weights = v1.get_variable("weights", [EMBEDDING_SIZE, CLASSES])
        logits = tf.matmul(prelogits, weights) + v1.get_variable("biases", [CLASSES])
    tf.math.l2_normalize(prelogits, 1, 1e-10, name="embeddings")
    tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(label_batch, logits), name="loss")
    return network


def calibrate(session: v1.Session, network: Network, rng: np.random.Generator) -> None:
    """Moving averages near the statistics of random images, each perturbed.

    Random features would otherwise drift through dozens of batch norms to a constant embedding; the
    perturbation keeps the inference mode well apart from the training mode (batch statistics)."""
    images = rng.standard_normal((4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    batch = session.run(
        [(mean, variance) for _, _, mean, variance in network.statistics],
        {"input:0": images, "phase_train:0": True},
    )
    for (moving_mean, moving_variance, _, _), (mean, variance) in zip(network.statistics, batch, strict=True):
        noise = rng.normal(0, 0.2, mean.shape) * np.sqrt(variance)
        moving_mean.load((mean + noise).astype(np.float32), session)
        moving_variance.load((variance * rng.uniform(0.6, 1.5, variance.shape)).astype(np.float32), session)


def frozen_as_facenet_does(session: v1.Session) -> v1.GraphDef:
    """facenet's freeze_graph.py: ops that write variables made pure, then variables as constants."""
    graph_def = session.graph.as_graph_def()
    for node in graph_def.node:
        if node.op == "RefSwitch":
            node.op = "Switch"
            node.input[:] = [f"{name}/read" if "moving_" in name else name for name in node.input]
        elif node.op in ("AssignSub", "AssignAdd"):
            node.op = "Sub" if node.op == "AssignSub" else "Add"
            del node.attr["use_locking"]
    return v1.graph_util.convert_variables_to_constants(session, graph_def, ["embeddings", "label_batch"])


def write_other_network(path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3], name="input")
        tf.reduce_mean(images, axis=[1, 2], name="features")
    path.write_bytes(graph.as_graph_def().SerializeToString())


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    folder = Path(job["folder"])
    v1.disable_eager_execution()
    v1.disable_control_flow_v2()  # Switch/Merge, as TensorFlow 1 built them
    v1.disable_resource_variables()  # VariableV2, RefSwitch
    v1.set_random_seed(job["seed"])
    network = training_graph(job["repeats"])
    moving_averages = [variable for moving in network.statistics for variable in moving[:2]]
    saver = v1.train.Saver(v1.trainable_variables() + moving_averages)
    probe = np.load(job["probe"])
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        calibrate(session, network, np.random.default_rng(job["seed"]))
        (folder / f"{RELEASE}.pb").write_bytes(frozen_as_facenet_does(session).SerializeToString())
        prefix = folder / f"model-{RELEASE}.ckpt"
        saver.save(session, str(prefix), global_step=CHECKPOINT_STEP, write_meta_graph=False)
        saver.export_meta_graph(str(folder / f"model-{RELEASE}.meta"))
        (folder / "checkpoint").unlink()
        for name, training in (("inference", False), ("training", True)):
            embeddings = session.run("embeddings:0", {"input:0": probe, "phase_train:0": training})
            np.save(folder / f"{name}.npy", embeddings)
    write_other_network(folder / "other-network.pb")


if __name__ == "__main__":
    main(sys.argv[1])
