"""The paper's experiments: Table 1 models and data, one training loop, Table 2, and the transplant experiment."""
