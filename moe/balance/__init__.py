"""Balancers: aux losses and loss-free bias updates that keep expert load even. One file each."""

from moe.balance.aux_free import AuxFreeBalancer
from moe.balance.base import Balancer
from moe.balance.importance import ImportanceLoss
from moe.balance.remoe_l1 import ReMoEL1Loss
from moe.balance.switch_aux import SwitchAuxLoss
from moe.balance.z_loss import ZLoss

__all__ = ["AuxFreeBalancer", "Balancer", "ImportanceLoss", "ReMoEL1Loss", "SwitchAuxLoss", "ZLoss"]
