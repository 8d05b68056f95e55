"""Balancers: aux losses and loss-free bias updates that keep expert load even. One file each."""

from moe.balance.base import Balancer
from moe.balance.switch_aux import SwitchAuxLoss
from moe.balance.z_loss import ZLoss

__all__ = ["Balancer", "SwitchAuxLoss", "ZLoss"]
