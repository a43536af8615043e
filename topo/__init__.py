"""topo: train sparse networks whose connections adapt, record their masks, and study them as graphs.

Implements "Adaptive Weight Sparsity for Training Deep Neural Networks" (ICLR 2018 submission).
"""

from topo.errors import CheckpointError, ConfigError, EmptyGraphWarning, MaskError, TopoError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "EmptyGraphWarning", "MaskError", "TopoError", "__version__"]
