"""Weights of the authors' ``S4M`` class (JusperLee/S4M) in our modules.

:func:`from_authors_state_dict` turns a ``state_dict()`` of their ``S4M``
into a :class:`~speechbrain_s4m.lobes.separator.Separator` of our modules
that computes the same outputs; :func:`to_authors_state_dict` is the
inverse. The name mapping is one table, :func:`authors_name_table`; tensors
differ only by singleton dimensions.
"""

import re

import torch

from speechbrain_s4m.lobes.encoder_decoder import S4MDecoder, S4MEncoder
from speechbrain_s4m.lobes.s4m import S4MMaskNet
from speechbrain_s4m.lobes.separator import Separator

_PYRAMID = re.compile(r"sm\.unet\.spp_dw\.\d+\.conv\.weight$")
_FUSION = {  # their LALayer parts -> ours
    "local_embedding": "local_embedding",
    "global_act": "global_gate",
    "global_embedding": "global_embedding",
}
_CONV_NORM = {  # their ConvNorm parts -> ours
    "conv.weight": "conv.weight",
    "norm.gamma": "norm.weight",
    "norm.beta": "norm.bias",
}


def authors_name_table(depth):
    """Their state-dict names -> ours (a :class:`Separator`'s) for a model
    of ``depth`` scales (their ``upsampling_depth``).

    Returns ``{their name: our name}`` for every tensor we use, and the
    set of their names that our model leaves out: the coarsest scale's
    fusion layer, which their merge never reads (``fusion_index_quirk``).
    """
    b, ours = "sm.unet.", "masknet.block."
    t = {
        "encoder.weight": "encoder.conv1d.weight",
        "ln.gamma": "masknet.norm.weight",
        "ln.beta": "masknet.norm.bias",
        b + "proj_1x1.norm.gamma": ours + "proj_norm.weight",
        b + "proj_1x1.norm.beta": ours + "proj_norm.bias",
        b + "proj_1x1.act.weight": ours + "proj_act.weight",
        b + "s4.layer.D": ours + "s4.s4.D",
        "sm.concat_block.1.weight": "masknet.iter_act.weight",
        "mask_net.0.weight": "masknet.mask_act.weight",
        "decoder.weight": "decoder.weight",
    }
    for theirs, name in [  # a weight and a bias each
        ("bottleneck", "masknet.bottleneck"),
        (b + "proj_1x1.conv", ours + "proj"),
        (b + "res_conv", ours + "res_conv"),
        (b + "s4.norm", ours + "s4.norm"),
        (b + "s4.layer.output_linear.0", ours + "s4.s4.output_linear"),
        (b + "ff.norm", ours + "ffn.norm"),
        (b + "ff.layer.ff.0.0", ours + "ffn.linear1"),
        (b + "ff.layer.ff.2", ours + "ffn.linear2"),
        ("sm.concat_block.0", "masknet.iter_conv"),
        ("mask_net.1", "masknet.mask_conv"),
    ]:
        for part in ("weight", "bias"):
            t[f"{theirs}.{part}"] = f"{name}.{part}"
    kernel = b + "s4.layer.kernel.kernel."
    for theirs, name in [
        ("log_dt", "log_dt"),
        ("inv_w_real", "log_A_real"),  # their real_type "exp": same map
        ("w_imag", "A_imag"),
        ("B", "B"),
        ("P", "P"),
        ("C", "C"),  # C̃, for the length L below
        ("L", "c_length"),
    ]:
        t[kernel + theirs] = ours + "s4.s4." + name
    for k in range(depth):
        for theirs, name in [*_CONV_NORM.items(), ("conv.bias", "conv.bias")]:
            t[f"{b}spp_dw.{k}.{theirs}"] = f"{ours}pyramid.{k}.{name}"
    unused = set()
    for prefix, our_prefix, count in [
        ("loc_glo_fus", "fuse", depth),
        ("last_layer", "merge", depth - 1),
    ]:
        for k in range(count):
            for part, our_part in _FUSION.items():
                for theirs, name in _CONV_NORM.items():
                    key = f"{b}{prefix}.{k}.{part}.{theirs}"
                    if prefix == "loc_glo_fus" and k == depth - 1:
                        unused.add(key)
                    else:
                        t[key] = f"{ours}{our_prefix}.{k}.{our_part}.{name}"
    return t, unused


def _config(state_dict):
    """Sizes read off their tensors' shapes."""
    try:
        enc = state_dict["encoder.weight"]  # [E, 1, K]
        kernel = state_dict["sm.unet.s4.layer.kernel.kernel.C"]
        return {
            "E": enc.shape[0],
            "K": enc.shape[-1],
            "C": state_dict["bottleneck.weight"].shape[0],
            "D": state_dict["sm.unet.proj_1x1.conv.weight"].shape[0],
            "depth": sum(bool(_PYRAMID.match(k)) for k in state_dict),
            "d_state": 2 * kernel.shape[-2],
            "num_spks": state_dict["decoder.weight"].shape[1],
            "dtype": enc.dtype,
        }
    except (KeyError, AttributeError, IndexError) as err:
        raise ValueError(
            "this is not a state dict of the authors' S4M class (missing or "
            f"malformed {err}); pass S4M(...).state_dict() or the dict saved "
            "from it"
        ) from None


def from_authors_state_dict(state_dict, num_iterations=16):
    """Our S4M (a :class:`Separator`) with the weights of the authors'
    ``S4M`` class; it computes what theirs computes (forward and gradients).

    The sizes are read off the tensors; their ``num_blocks`` is not stored
    in a state dict and must be given.

    Arguments
    ---------
    state_dict : Mapping[str, torch.Tensor]
        ``S4M(...).state_dict()`` of their class (``L = 0``, before a
        forward, means the same here).
    num_iterations : int
        Their ``num_blocks`` (16 in S4M-tiny and S4M).

    Returns a :class:`Separator` (framing ``"authors"``, joint decoder) in
    the tensors' dtype; raises ValueError listing unknown or missing names
    and mismatched shapes.

    Example
    -------
    >>> sep = Separator(
    ...     S4MEncoder(16, 9), S4MMaskNet(9, 8, 16, 3, 2, d_state=4),
    ...     S4MDecoder(9, 2, 16), num_spks=2)
    >>> theirs = to_authors_state_dict(sep)
    >>> again = from_authors_state_dict(theirs, num_iterations=2)
    >>> x = torch.randn(1, 300)
    >>> torch.equal(again(x), sep(x))
    True
    """
    cfg = _config(state_dict)
    table, unused = authors_name_table(cfg["depth"])
    if num_iterations == 1:
        # one application never reads their concat_block; ours has none
        concat = {k for k in table if k.startswith("sm.concat_block.")}
        unused = unused | concat
        table = {k: v for k, v in table.items() if k not in concat}
    given = set(state_dict)
    unknown = sorted(given - set(table) - unused)
    missing = sorted(set(table) - given)
    if unknown or missing:
        raise ValueError(
            "the state dict does not match the authors' S4M with "
            f"upsampling_depth={cfg['depth']}: unknown keys "
            f"{unknown[:5] or 'none'}"
            f"{' ...' if len(unknown) > 5 else ''}, missing keys "
            f"{missing[:5] or 'none'}{' ...' if len(missing) > 5 else ''}"
        )
    sep = Separator(
        S4MEncoder(cfg["K"], cfg["E"], framing="authors"),
        S4MMaskNet(
            cfg["E"],
            out_channels=cfg["C"],
            hidden_channels=cfg["D"],
            depth=cfg["depth"],
            num_iterations=num_iterations,
            num_spks=cfg["num_spks"],
            d_state=cfg["d_state"],
            fusion_index_quirk=True,
        ),
        S4MDecoder(cfg["E"], cfg["num_spks"], cfg["K"]),
        num_spks=cfg["num_spks"],
    ).to(cfg["dtype"])
    ours = sep.state_dict()
    converted, bad = {}, []
    for theirs, name in table.items():
        value = torch.as_tensor(state_dict[theirs])
        target = ours[name]
        # their shapes differ from ours only by singleton dimensions
        if value.squeeze().shape != target.squeeze().shape:
            bad.append(
                f"{theirs} {tuple(value.shape)} -> {name} {tuple(target.shape)}"
            )
            continue
        converted[name] = value.reshape(target.shape).to(target.dtype)
    if bad:
        raise ValueError("shapes do not match: " + "; ".join(bad[:5]))
    sep.load_state_dict(converted, strict=True)
    return sep


def to_authors_state_dict(separator):
    """The inverse of :func:`from_authors_state_dict`: the weights of an
    authors-variant ``separator`` (framing ``"authors"``, joint decoder,
    ``fusion_index_quirk=True``) as ``{their name: tensor}``, in their
    shapes (without the unused coarsest fusion layer, which ours lacks)."""
    depth = len(separator.masknet.block.pyramid)
    table, _ = authors_name_table(depth)
    ours = separator.state_dict()
    table = {k: v for k, v in table.items() if v in ours}
    return {
        theirs: ours[name].reshape(_their_shape(theirs, ours[name])).clone()
        for theirs, name in table.items()
    }


def _their_shape(theirs, ours):
    """Their shape of tensor ``theirs`` from ours: gLN gains and biases
    (``gamma``, ``beta``) are ``[channels]``; B and P carry a leading rank /
    copy dimension, D a leading channel one."""
    if theirs.endswith(("gamma", "beta")):
        return (ours.shape[1],)
    if theirs.endswith(("kernel.B", "kernel.P", "layer.D")):
        return (1, *ours.shape)
    return tuple(ours.shape)
