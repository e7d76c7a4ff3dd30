"""Stage-1 loss terms (Hydra components): reference RGB/alpha, SDS and the QA-Triplet contrastive loss."""

from cg_lightning.losses.base import LossContext, LossOutput, LossTerm, as_loss_terms
from cg_lightning.losses.qa_triplet import QATripletLoss
from cg_lightning.losses.reference import ReferenceAlphaLoss, ReferenceRGBLoss
from cg_lightning.losses.sds import SDSLoss

__all__ = ["LossContext", "LossOutput", "LossTerm", "as_loss_terms", "QATripletLoss", "ReferenceAlphaLoss",
           "ReferenceRGBLoss", "SDSLoss"]
