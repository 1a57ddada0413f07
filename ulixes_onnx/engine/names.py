"""The names of the cloak graph's inputs and outputs: what the product feeds and fetches.

Kept apart from the graph builders so that running a built graph does not import onnx (a second of
start-up on a small machine).
"""

CANONICAL_INPUT = "x"
POSITIVE = "e_pos"
NEGATIVE = "e_neg"
MARGIN = "margin"
NEGATIVE_WEIGHT = "neg_weight"
LOSS = "loss"
GRADIENT = "grad"
EMBEDDING = "emb"
POSITIVE_DISTANCE = "d_pos"
NEGATIVE_DISTANCE = "d_neg"
# The feature-level objective's extra inputs and outputs (graphs built with a feature layer only).
FEATURE_POSITIVE = "f_pos"
FEATURE_WEIGHT = "feature_weight"
FEATURE = "feat"
FEATURE_DISTANCE = "d_feat"
# Graphs built with activation noise take one more input per activation layer, numbered from 0: its
# per-sample, per-channel factors [N, C, 1, 1].
ACTIVATION_NOISE = "noise_"
# Graphs built with the skip-gradient method take one more input [1]: the factor by which the gradient
# through every residual branch is multiplied on the way back (1 gives the true gradient).
SKIP_GRADIENT_DECAY = "skip_decay"
# Graphs built with the linear backward pass take one more input [1]: how far the late activation
# layers are taken for the identity on the way back (0 gives the true gradient, 1 the identity).
BACKWARD_LINEARITY = "backward_linearity"
