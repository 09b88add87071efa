"""``python -m edgekit.device --config FILE``: the device agent as a process of its own (:mod:`edgekit.device.standalone`)."""

import sys

from edgekit.device.standalone import main

if __name__ == "__main__":
    sys.exit(main())
