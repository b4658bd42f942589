"""Pretrained backbones from timm, and how much of them is trained: all of it, a linear probe, or LoRA (PEFT).

A backbone is a timm name plus keyword arguments (`timm/resnet50`, `timm/vit_small_patch16_224`,
`model_kwargs: {img_size: 28, patch_size: 4}`); its normalisation comes from `timm.data.resolve_data_config`,
so the model keeps the project's [0, 1] pixel contract. Weights: `pretrained: false` (random), `true` (the
published weights: a local copy in `weights_dir()`, the Hugging Face cache, or a download), or a path to a
safetensors file / state dict. Fine-tuning is a mode plus a PEFT `LoraConfig`; the classifier is always trained.

Every problem (an unknown name, a weights file of another architecture or class count, LoRA targets that match
nothing, an input size the model cannot take) is a one-line ConfigError/DataError raised while the model is
built, before a run writes anything. timm and PEFT are imported here only, when a timm backbone is asked for.
"""
from __future__ import annotations

import difflib
import os
import socket
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from core.errors import ConfigError, DataError

PREFIX = "timm/"
FINETUNE_MODES = ("full", "linear", "lora")
#: LoRA target shorthands: the Linear layers inside attention blocks, the (ungrouped) convolutions
LORA_GROUPS = ("attention", "conv")
ADAPTER = "default"  # PEFT's adapter name
Pretrained = Union[bool, str, None]


def is_timm(arch: str) -> bool:
    return isinstance(arch, str) and arch.startswith(PREFIX)


def weights_dir() -> Path:
    """Where `pretrained: true` looks for published weights before the network: $MEDROBUST_WEIGHTS, else
    ~/.cache/medrobust/weights (files named `<architecture>.<tag>.safetensors`, e.g. resnet50.a1_in1k)."""
    return Path(os.environ.get("MEDROBUST_WEIGHTS") or Path.home() / ".cache" / "medrobust" / "weights").expanduser()


def _timm():
    from core.quiet import quiet_third_party

    quiet_third_party()
    import timm

    return timm


def timm_name(arch: str) -> str:
    """The timm model name of `timm/NAME`; ConfigError naming close matches for a name timm does not know."""
    timm = _timm()
    name = arch[len(PREFIX):] if is_timm(arch) else arch
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(PREFIX + c for c in close)}?)" if close else " (see timm.list_models())"
        raise ConfigError(f"unknown timm model {arch!r}{hint}")
    return name


# ---- weights ----------------------------------------------------------------------------------------------
def _names(value: Any) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) if value else ()


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file (a state dict, or one under 'state_dict'/'model')."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                    state = state[key]
    except Exception as err:  # a truncated or foreign file: any of the readers' errors
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path} is not a readable weights file ({type(err).__name__}: {detail})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, name: str, path: str | os.PathLike, in_channels: int) -> str:
    """Load the weights file at `path` into the timm `model` (built with random weights); returns what happened
    to the classifier. The file must hold weights of this architecture: timm's own conversion for the model
    family (e.g. a ViT's position embeddings resampled to `img_size`) and its input-channel adaptation (RGB
    weights summed for grey input) are applied; a classifier of the published class count is replaced by a
    fresh one for this run's classes, one of another count is refused."""
    state = read_weights(path)
    cfg = model.pretrained_cfg
    module = sys.modules.get(_timm().models.model_entrypoint(name.split(".")[0]).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, model)
        except Exception as err:  # noqa: BLE001  (a conversion that fails means: not this architecture)
            raise ConfigError(f"{path} does not hold weights of timm/{name} ({type(err).__name__} converting it: "
                              f"{(str(err).splitlines() or [''])[0][:160]})") from None
    for conv in _names(cfg.get("first_conv")):
        weight = state.get(f"{conv}.weight")
        if weight is not None and weight.ndim == 4 and weight.shape[1] != in_channels:
            state[f"{conv}.weight"] = _timm().models.adapt_input_conv(in_channels, weight)
    head, num_classes = "kept", getattr(model.get_classifier(), "out_features", None)
    for classifier in _names(cfg.get("classifier")):
        weight = state.get(f"{classifier}.weight")
        if weight is None or num_classes is None or weight.shape[0] == num_classes:
            continue
        if weight.shape[0] != cfg.get("num_classes"):
            raise ConfigError(f"{path} holds a classifier for {weight.shape[0]} classes: this run has {num_classes} "
                              f"(a file with timm/{name}'s published {cfg.get('num_classes')} classes gets a new "
                              f"classifier)")
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
        head = f"new {num_classes}-class classifier (the file's has the published {weight.shape[0]} classes)"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ: another depth, width or patch size
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:200])
        raise ConfigError(f"{path} does not hold weights of timm/{name}: {mismatch[:240]}") from None
    if head != "kept":
        missing = [k for k in missing if not any(k.startswith(f"{c}.") for c in _names(cfg.get("classifier")))]
    if missing or unexpected:
        parts = [f"{len(missing)} of its parameters missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} it does not have (e.g. {unexpected[0]})" if unexpected else ""]
        raise ConfigError(f"{path} does not hold weights of timm/{name}: {'; '.join(p for p in parts if p)}")
    return head


def published_file(model: nn.Module) -> tuple[str, str]:
    """(download address, file name in weights_dir()) of the timm model's published weights."""
    cfg = model.pretrained_cfg
    tagged = f"{cfg.get('architecture')}.{cfg['tag']}" if cfg.get("tag") else str(cfg.get("architecture"))
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename") or "model.safetensors"
        return f"https://huggingface.co/{cfg['hf_hub_id']}/resolve/main/{filename}", f"{tagged}{Path(filename).suffix}"
    if cfg.get("url"):
        return cfg["url"], f"{tagged}{Path(cfg['url']).suffix or '.pth'}"
    return "", f"{tagged}.safetensors"


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_published(model: nn.Module) -> Optional[str]:
    """The published weights in the Hugging Face cache, when timm downloaded them before."""
    cfg = model.pretrained_cfg
    if not cfg.get("hf_hub_id"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(cfg["hf_hub_id"], filename) if filename else None
        if isinstance(found, str):
            return found
    return None


# ---- the model --------------------------------------------------------------------------------------------
def create(arch: str, in_channels: int, num_classes: int, pretrained: Pretrained = False,
           model_kwargs: Optional[Mapping[str, Any]] = None) -> tuple[nn.Module, str]:
    """(timm model, where its weights came from) for `timm/NAME`, with this run's input channels and classes."""
    timm = _timm()
    name = timm_name(arch)
    kwargs = {**dict(model_kwargs or {}), "num_classes": num_classes, "in_chans": in_channels}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ConfigError(f"timm cannot build {arch} with {dict(model_kwargs or {})}: "
                          f"{(str(err).splitlines() or [''])[0][:200]}") from None
    if pretrained is None or pretrained is False or (isinstance(pretrained, str) and pretrained.lower() == "false"):
        return model, "random"
    if isinstance(pretrained, str) and pretrained.lower() != "true":
        head = load_weights(model, name, pretrained, in_channels)
        return model, f"{pretrained} ({head})"
    url, filename = published_file(model)
    local = weights_dir() / filename
    for path in (local if local.is_file() else None, _cached_published(model)):
        if path:
            return model, f"{path} ({load_weights(model, name, path, in_channels)})"
    if url and _hub_reachable():
        try:
            return timm.create_model(name, pretrained=True, **kwargs), f"published ({url})"
        except Exception as err:  # noqa: BLE001  (any download or hub error: say what to do instead)
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
    else:
        reason = "no network" if url else "timm lists no published weights for it"
    where = f"download {url} and save it as {local}" if url else f"put a weights file at {local}"
    raise ConfigError(f"pretrained weights of {arch} cannot be had here ({reason}): {where} "
                      f"(or set model.init_args.finetuning.pretrained to its path)")


def normalization(model: nn.Module, in_channels: int) -> tuple[list[float], list[float]]:
    """The backbone's own mean and std (`timm.data.resolve_data_config`) for `in_channels` channels: for grey
    input, the mean over RGB (timm sums the RGB filters of pretrained weights into the one input channel)."""
    config = _timm().data.resolve_data_config(model=model)
    mean, std = [float(m) for m in config["mean"]], [float(s) for s in config["std"]]
    if in_channels == len(mean):
        return mean, std
    return [sum(mean) / len(mean)] * in_channels, [sum(std) / len(std)] * in_channels


def check_input_size(model: nn.Module, arch: str, in_channels: int, size: int) -> None:
    """ConfigError when the model cannot take `size` px input: a fixed-size model (a ViT built for 224 px) of
    another size, or an input that a forward pass refuses (too small for the stem)."""
    embed = getattr(model, "patch_embed", None)
    fixed = getattr(embed, "img_size", None) if getattr(embed, "strict_img_size", False) else None
    fixed = fixed[0] if isinstance(fixed, (tuple, list)) else fixed
    if fixed and fixed != size:
        patch = getattr(embed, "patch_size", (16,))[0]
        raise ConfigError(
            f"{arch} takes {fixed} px input, the data gives {size} px: set data.resize: {fixed}, or build it for "
            f"{size} px with model.init_args.network.model_kwargs: "
            f"{{img_size: {size}, patch_size: <a divisor of {size}>}} (its patch size is {patch})")
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, size, size))
    except Exception as err:  # noqa: BLE001  (whatever the model raises: the input does not fit it)
        raise ConfigError(f"{arch} cannot take {size} px input (resize smaller than the model needs?): "
                          f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}") from None
    finally:
        model.train(was_training)


# ---- fine-tuning modes ------------------------------------------------------------------------------------
def classifier_names(model: nn.Module) -> tuple[str, ...]:
    names = dict(model.named_modules())
    return tuple(n for n in _names(model.pretrained_cfg.get("classifier")) if n in names)


def lora_targets(model: nn.Module, arch: str, targets: Optional[Sequence[str]]) -> tuple[list[str], str]:
    """(module names, what they are) for LoRA. `attention` and `conv` stand for the Linear layers inside the
    model's attention blocks and its ungrouped Conv2d layers (PEFT cannot merge grouped ones); other entries are
    PEFT target names (a module name or its last part). Default: attention when the model has it, else conv.
    The classifier is never a target (it is trained whole)."""
    head = classifier_names(model)
    modules = [(n, m) for n, m in model.named_modules() if n and not any(n == h or n.startswith(h + ".") for h in head)]
    groups = {
        "attention": [n for n, m in modules if isinstance(m, nn.Linear) and ".attn." in f".{n}"],
        "conv": [n for n, m in modules if isinstance(m, nn.Conv2d) and m.groups == 1],
    }
    wanted = list(targets) if targets else (["attention"] if groups["attention"] else ["conv"])
    names, described = [], []
    for target in wanted:
        if target in groups:
            if not groups[target]:
                kind = "attention layers" if target == "attention" else "ungrouped convolutions"
                raise ConfigError(f"{arch} has no {kind} for LoRA (lora_targets: {target}); choose "
                                  f"{' or '.join(g for g in LORA_GROUPS if groups[g]) or 'layer names'}")
            names += groups[target]
            described.append(f"{len(groups[target])} {target} layers")
        else:
            found = [n for n, _ in modules if n == target or n.endswith("." + target)]
            if not found:
                raise ConfigError(f"LoRA target {target!r} matches no layer of {arch} (e.g. "
                                  f"{', '.join(n for n, _ in modules[:4])}; or say {' / '.join(LORA_GROUPS)})")
            names += found
            described.append(f"{len(found)} '{target}' layers")
    return sorted(set(names)), " + ".join(described)


def apply_lora(model: nn.Module, arch: str, rank: int, alpha: Optional[float], dropout: float,
               targets: Optional[Sequence[str]]) -> tuple[nn.Module, str]:
    """The PEFT LoRA model (`LoraConfig` + `get_peft_model`): adapters of `rank` on the targets, the classifier
    trained whole (`modules_to_save`), everything else frozen."""
    from peft import LoraConfig, get_peft_model

    if int(rank) < 1:
        raise ConfigError(f"lora_rank must be >= 1, got {rank}")
    names, described = lora_targets(model, arch, targets)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        lora_dropout=float(dropout), target_modules=names,
                        modules_to_save=list(classifier_names(model)))
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:  # e.g. a grouped convolution whose group count does not divide the rank
        raise ConfigError(f"PEFT cannot put LoRA on {arch}: {(str(err).splitlines() or [''])[0][:200]}") from None
    return peft_model, f"LoRA r={rank}, alpha={config.lora_alpha:g} on {described}"


class TimmBackbone(nn.Module):
    """A timm model (or its PEFT LoRA wrapper) as a build_model backbone. Frozen parts stay frozen in train mode
    too: a linear probe's whole backbone runs in eval mode, and under LoRA the frozen BatchNorm layers keep the
    running statistics they were loaded with."""

    def __init__(self, net: nn.Module, arch: str, finetune: str, description: str):
        super().__init__()
        self.net, self.arch, self.finetune, self.description = net, arch, finetune, description
        head_modules = {id(m) for m in self.classifier().modules()}
        if finetune == "linear":
            self._frozen = [m for m in self.base().modules() if id(m) not in head_modules and m is not self.base()]
        else:
            self._frozen = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                            and not any(p.requires_grad for p in m.parameters()) and id(m) not in head_modules]

    def base(self) -> nn.Module:
        """The timm model (with LoRA layers in place under LoRA)."""
        return self.net.get_base_model() if hasattr(self.net, "get_base_model") else self.net

    def classifier(self) -> nn.Module:
        """The layer that maps features to logits (the trained copy under LoRA)."""
        layer = self.base().get_classifier()
        saved = getattr(layer, "modules_to_save", None)
        if saved is not None:
            layer = saved[ADAPTER]
        return layer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled representation the classifier reads (timm's `forward_head(..., pre_logits=True)`)."""
        base = self.base()
        return base.forward_head(base.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> "TimmBackbone":
        super().train(mode)
        if mode:
            for module in self._frozen:
                module.eval()
        return self

    def merged(self) -> nn.Module:
        """A plain timm model with this one's weights (LoRA merged into the layers): what `save_weights` writes."""
        import copy

        net = copy.deepcopy(self.net)
        return net.merge_and_unload() if hasattr(net, "merge_and_unload") else net


def build(arch: str, in_channels: int, num_classes: int, *, input_size: Optional[int] = None,
          pretrained: Pretrained = False, finetune: str = "full", lora_rank: int = 8,
          lora_alpha: Optional[float] = None, lora_dropout: float = 0.0, lora_targets: Optional[Sequence[str]] = None,
          model_kwargs: Optional[Mapping[str, Any]] = None) -> tuple[TimmBackbone, list[float], list[float]]:
    """(backbone, mean, std): the timm model with its weights, checked against `input_size`, in its fine-tuning
    mode, and the normalisation its weights expect."""
    if finetune not in FINETUNE_MODES:
        raise ConfigError(f"unknown finetune mode {finetune!r}: choose one of {', '.join(FINETUNE_MODES)}")
    model, source = create(arch, in_channels, num_classes, pretrained, model_kwargs)
    if input_size is not None:
        check_input_size(model, arch, in_channels, int(input_size))
    mean, std = normalization(model, in_channels)
    description = f"{arch}, weights: {source}"
    if input_size is not None:
        description += f", input {int(input_size)} px (other sizes resized in the model; epsilon on the served images)"
    if finetune == "lora":
        model, adapters = apply_lora(model, arch, lora_rank, lora_alpha, lora_dropout, lora_targets)
        description += f", {adapters}"
    elif finetune == "linear":
        head = {id(p) for name in classifier_names(model) for p in model.get_submodule(name).parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
        description += ", linear probe (backbone frozen)"
    return TimmBackbone(model, arch, finetune, description), mean, std


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (PEFT's print_trainable_parameters, without the print)."""
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """The timm backbone of a build_model model (or of a module holding it as `.model`, like ERM), LoRA merged,
    as a safetensors file: it loads with `pretrained: PATH` into a model of the same architecture."""
    from safetensors.torch import save_file

    backbone = next((m for m in model.modules() if isinstance(m, TimmBackbone)), None)
    if backbone is None:
        raise ConfigError(f"save_weights needs a model with a timm backbone, got {type(model).__name__}")
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.merged().state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
