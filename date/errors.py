"""The errors an entrypoint reports as a one-paragraph message (exit code 2: bad input) instead of a
traceback; see date.runtime.logs.errors_as_messages."""
from date.config import ConfigError
from date.data.errors import DatasetError
from date.modeling.backbone import BackboneWeightsError
from date.runtime.checkpoint import CheckpointError
from date.runtime.distributed import DeviceError
from date.runtime.outputs import OutputError
from date.runtime.run_dir_lock import RunDirBusyError
from date.runtime.tracking import TrackingError

INPUT_ERRORS = (ConfigError, DatasetError, TrackingError, CheckpointError, BackboneWeightsError, RunDirBusyError,
                DeviceError, OutputError)
