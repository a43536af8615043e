"""Recording masks during training: the recorder, the run-directory format, and safe checkpoint reading."""

from topo.record.checkpoint import load_masks, masks_from_state_dict, safe_load
from topo.record.recorder import Recorder, restore_checkpoint
from topo.record.store import RunReader

__all__ = ["Recorder", "RunReader", "load_masks", "masks_from_state_dict", "restore_checkpoint", "safe_load"]
