"""What every tracker's state is: rows of arrays, one row per device. The complete estimator
grows, snapshots and restores its trackers through these accessors alone."""

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["DeviceRows"]


class DeviceRows:
    """A tracker's per-device state: `float_state` and `int_state` (n_devices rows each), and
    any more rows a tracker names in `rows()`."""

    float_state: NDArray[np.float64]
    int_state: NDArray[np.int64]

    def rows(self) -> dict[str, NDArray[Any]]:
        """The state arrays with one row per device, by name."""
        return {"float": self.float_state, "int": self.int_state}

    def copy_rows_to(self, other: "DeviceRows") -> None:
        """Copy every device's rows into `other`, a larger tracker that replaces this one."""
        target = other.rows()
        for name, source in self.rows().items():
            target[name][: source.shape[0]] = source
