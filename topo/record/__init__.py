"""Recording masks during training: the recorder, the run-directory format, and safe checkpoint reading."""

from topo.record.checkpoint import load_masks, masks_from_state_dict
from topo.record.recorder import Recorder
from topo.record.store import RunReader
from topo.record.training_state import read_checkpoint, restore_checkpoint, safe_load

__all__ = ["Recorder", "RunReader", "load_masks", "masks_from_state_dict", "read_checkpoint", "restore_checkpoint",
           "safe_load"]
