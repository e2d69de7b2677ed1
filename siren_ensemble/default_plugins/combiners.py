from ..cascade import CascadeCombiner
from ..combiners import LogitMeanCombiner, MaxCombiner, MeanCombiner, VoteCombiner, WeightedMeanCombiner
from ..hookspecs import hookimpl
from ..stacking import StackingCombiner


@hookimpl
def register_combiners(register):
    for combiner in (MeanCombiner, WeightedMeanCombiner, LogitMeanCombiner, MaxCombiner, VoteCombiner, StackingCombiner, CascadeCombiner):
        register(combiner)
