"""topo inside other people's training loops: PyTorch Lightning (:mod:`topo.integrations.lightning`) and the
Hugging Face ``Trainer`` (:mod:`topo.integrations.transformers`). Each is an optional extra."""
