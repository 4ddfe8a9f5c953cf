"""Cost models: how long one ``Op`` takes on one device, with a breakdown."""

from xpusim.sim.cost.base import CachedCostModel, CostModel, OpCost
from xpusim.sim.cost.roofline import RooflineModel

__all__ = ["CachedCostModel", "CostModel", "OpCost", "RooflineModel"]
