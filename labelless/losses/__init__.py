"""Pure loss functions, each with known-answer tests. Methods compose them."""
from labelless.losses.clustering import (confident_self_label_loss, entropy, iic_loss, mean_entropy, scan_loss)
from labelless.losses.contrastive import byol_loss, nt_xent_loss
from labelless.losses.vat import vat_loss

__all__ = ["byol_loss", "confident_self_label_loss", "entropy", "iic_loss", "mean_entropy", "nt_xent_loss", "scan_loss",
           "vat_loss"]
