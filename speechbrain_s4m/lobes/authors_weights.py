"""Weights of the authors' ``S4M`` class (JusperLee/S4M) in our modules.

:func:`from_authors_state_dict` takes a ``state_dict()`` saved from the
authors' ``S4M(out_channels, in_channels, num_blocks, upsampling_depth,
enc_kernel_size, num_sources, sample_rate)`` and returns the same model as a
:class:`speechbrain_s4m.lobes.separator.Separator` of our modules (their
framing, joint decoder, merge indexing and S4 parametrisation), which gives
the same outputs. The name and shape mapping is one table,
:func:`authors_name_table`; tensors differ only by singleton dimensions.

Authors
 * speechbrain-s4m contributors 2026
"""

import re

import torch

from speechbrain_s4m.lobes.s4m import S4MDecoder, S4MEncoder, S4MMaskNet
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
    """Their state-dict names -> ours (a :class:`Separator`'s), for a model
    of ``depth`` scales (``upsampling_depth``).

    Arguments
    ---------
    depth : int
        Number of scales.

    Returns
    -------
    table : dict
        ``{their name: our name}`` for every tensor we use.
    unused : set
        Their names that our model leaves out: the fusion layer of the
        coarsest scale, whose output their merge never reads (the
        ``fusion_index_quirk``), so it has no effect and gets no gradient.

    Example
    -------
    >>> table, unused = authors_name_table(4)
    >>> table["sm.unet.s4.layer.kernel.kernel.L"]
    'masknet.block.s4.s4.c_length'
    >>> len(table), len(unused)  # 116 tensors in all
    (107, 9)
    """
    b, ours = "sm.unet.", "masknet.block."
    t = {
        "encoder.weight": "encoder.conv1d.weight",
        "ln.gamma": "masknet.norm.weight",
        "ln.beta": "masknet.norm.bias",
        "bottleneck.weight": "masknet.bottleneck.weight",
        "bottleneck.bias": "masknet.bottleneck.bias",
        b + "proj_1x1.conv.weight": ours + "proj.weight",
        b + "proj_1x1.conv.bias": ours + "proj.bias",
        b + "proj_1x1.norm.gamma": ours + "proj_norm.weight",
        b + "proj_1x1.norm.beta": ours + "proj_norm.bias",
        b + "proj_1x1.act.weight": ours + "proj_act.weight",
        b + "res_conv.weight": ours + "res_conv.weight",
        b + "res_conv.bias": ours + "res_conv.bias",
        b + "s4.norm.weight": ours + "s4.norm.weight",
        b + "s4.norm.bias": ours + "s4.norm.bias",
        b + "s4.layer.D": ours + "s4.s4.D",
        b + "s4.layer.output_linear.0.weight": ours
        + "s4.s4.output_linear.weight",
        b + "s4.layer.output_linear.0.bias": ours + "s4.s4.output_linear.bias",
        b + "ff.norm.weight": ours + "ffn.norm.weight",
        b + "ff.norm.bias": ours + "ffn.norm.bias",
        b + "ff.layer.ff.0.0.weight": ours + "ffn.linear1.weight",
        b + "ff.layer.ff.0.0.bias": ours + "ffn.linear1.bias",
        b + "ff.layer.ff.2.weight": ours + "ffn.linear2.weight",
        b + "ff.layer.ff.2.bias": ours + "ffn.linear2.bias",
        "sm.concat_block.0.weight": "masknet.iter_conv.weight",
        "sm.concat_block.0.bias": "masknet.iter_conv.bias",
        "sm.concat_block.1.weight": "masknet.iter_act.weight",
        "mask_net.0.weight": "masknet.mask_act.weight",
        "mask_net.1.weight": "masknet.mask_conv.weight",
        "mask_net.1.bias": "masknet.mask_conv.bias",
        "decoder.weight": "decoder.weight",
    }
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
    """Our S4M with the weights of the authors' ``S4M`` class.

    The sizes (E, K, C, D, depth, N, sources) are read off the tensors;
    the number of block applications (their ``num_blocks``) is not stored
    in a state dict and must be given. The model returned, in the dtype of
    the given tensors, computes what theirs computes (forward and
    gradients).

    Arguments
    ---------
    state_dict : Mapping[str, torch.Tensor]
        ``S4M(...).state_dict()`` of the authors' class (e.g. from
        ``torch.load``), after at least one forward (their C̃ and its
        length ``L`` are set up at the first forward; ``L = 0`` is accepted
        and means the same here).
    num_iterations : int
        Their ``num_blocks`` (16 in S4M-tiny and S4M).

    Returns
    -------
    Separator
        Encoder (framing ``"authors"``), masknet, joint decoder;
        ``separator(mix)`` -> ``[batch, time, num_spks]``.

    Raises
    ------
    ValueError
        Names that are unknown or missing, or shapes that do not match,
        listed.

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
        if value.numel() != target.numel() or [
            n for n in value.shape if n != 1
        ] != [n for n in target.shape if n != 1]:
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
    """The inverse of :func:`from_authors_state_dict`: our separator's
    weights under the authors' names and shapes (the unused coarsest fusion
    layer is not included, since ours has none).

    Arguments
    ---------
    separator : Separator
        An authors-variant S4M (framing ``"authors"``, joint decoder,
        ``fusion_index_quirk=True``).

    Returns
    -------
    dict
        ``{their name: tensor}``.
    """
    depth = len(separator.masknet.block.pyramid)
    table, _ = authors_name_table(depth)
    ours = separator.state_dict()
    table = {k: v for k, v in table.items() if v in ours}
    shapes = _authors_shapes(ours, table)
    return {
        theirs: ours[name].reshape(shapes[theirs]).clone()
        for theirs, name in table.items()
    }


def _authors_shapes(ours, table):
    """Their tensor shapes, from ours: gLN gains are ``[channels]``, B and
    P carry a leading rank / copy dimension, D a leading channel one."""
    shapes = {}
    for theirs, name in table.items():
        shape = tuple(ours[name].shape)
        if theirs.endswith(("norm.gamma", "norm.beta")) or theirs in (
            "ln.gamma",
            "ln.beta",
        ):
            shape = (shape[1],)
        elif theirs.endswith(("kernel.B", "kernel.P", "layer.D")):
            shape = (1, *shape)
        shapes[theirs] = shape
    return shapes
