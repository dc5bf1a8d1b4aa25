"""The kernel manager the suite and the sweeps execute notebooks with.

jupyter_client's default starts a kernel over plain TCP on localhost, and ipykernel warns on every start
("Kernel is running over TCP without encryption"). Where the kernelspec declares CurveZMQ support (the
project's kernel, written by ``ipykernel install``, does), this manager provisions Curve keys: the
traffic is encrypted and the warning is gone. Elsewhere it behaves as the default manager.
"""

from __future__ import annotations

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

#: what papermill / nbclient take as ``kernel_manager_class``
MANAGER = "nscl.apps.kernel.EncryptedKernelManager"


class EncryptedKernelManager(AsyncKernelManager):
    if "transport_encryption" in AsyncKernelManager.class_trait_names():  # jupyter_client >= 8.10

        @default("transport_encryption")
        def _auto_encryption(self):
            return "auto"
