"""The paper's experiments: Table 1 models and data, one training loop, Table 2, and the transplant experiment.

The names below are what the command line offers; this module imports nothing, so ``topo --help`` stays light
(the modules that build models, load data and train check their own tables against these names).
"""

#: The Table 1 models (:data:`topo.experiments.models.MODELS`).
MODEL_NAMES = ("mlp", "vae", "lstm", "cnn", "resnet110", "resnet20", "gpt")
#: The datasets (:data:`topo.experiments.data.DATASETS`).
DATASET_NAMES = ("digits", "mnist", "mnist-5k", "fashion-mnist", "cifar10", "text", "sonnets")
#: What ``topo train`` and ``topo reproduce`` train: the sparsity methods, and ``wide-dense`` (the dense method on
#: budget-matched widths).
TRAIN_METHODS = ("dense", "wide-dense", "random-fixed", "random-channelwise", "adaptive", "pruning", "set", "rigl",
                 "srigl", "snip")
