"""Self-supervised methods, each a LightningModule on the shared backbone, chosen in YAML by class_path.

A method implements :meth:`SSLMethod.compute_loss`; what only one method uses lives in its sub-package.
"""

from sslvit.methods.base import SSLMethod
from sslvit.methods.beit import BEiT
from sslvit.methods.cpc import CPC
from sslvit.methods.loading import load_method
from sslvit.methods.mae import MAE

__all__ = ["SSLMethod", "MAE", "BEiT", "CPC", "load_method"]
