"""Recording masks during training: the recorder, the run-directory format, and safe checkpoint reading."""

from topo.record.checkpoint import load_masks
from topo.record.formats import CheckpointSource, Layer, open_checkpoint
from topo.record.recorder import Recorder
from topo.record.store import RunReader
from topo.record.training_state import read_checkpoint, restore_checkpoint, safe_load

__all__ = ["CheckpointSource", "Layer", "Recorder", "RunReader", "load_masks", "open_checkpoint", "read_checkpoint",
           "restore_checkpoint", "safe_load"]
