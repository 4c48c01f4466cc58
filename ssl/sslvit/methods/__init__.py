"""Self-supervised methods, each a LightningModule on the shared backbone, chosen in YAML by class_path."""

from sslvit.methods.base import SSLMethod
from sslvit.methods.beit import BEiT
from sslvit.methods.cpc import CPC
from sslvit.methods.mae import MAE

__all__ = ["SSLMethod", "MAE", "BEiT", "CPC"]
