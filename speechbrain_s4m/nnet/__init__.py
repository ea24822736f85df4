"""Neural network layers of S4M: S4 state-space layers, blocks, norms."""

from speechbrain_s4m.nnet.blocks import (
    ChannelLayerNorm,
    CumulativeLayerNorm,
    FeedForwardBlock,
    GlobalLayerNorm,
    S4Block,
)
from speechbrain_s4m.nnet.ssm import (
    S4,
    fft_conv,
    ssm_aware_optimizer,
    ssm_parameter_groups,
)

__all__ = [
    "S4",
    "ChannelLayerNorm",
    "CumulativeLayerNorm",
    "FeedForwardBlock",
    "GlobalLayerNorm",
    "S4Block",
    "fft_conv",
    "ssm_aware_optimizer",
    "ssm_parameter_groups",
]
