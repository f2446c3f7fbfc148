"""ResNet with BAM or CBAM: the official model of Jongchan/attention-module (MODELS/model_resnet.py,
the code behind the released ResNet-50+BAM and ResNet-50+CBAM ImageNet checkpoints).

    from attnkernels.models import ResidualNet, load_official_checkpoint
    model = ResidualNet("ImageNet", 50, 1000, "CBAM")
    load_official_checkpoint(model, "RESNET50_CBAM_new_name_wrap.pth")   # the released file

Same module names and state_dict keys as the official model, so its checkpoints load with
strict=True (load_official_checkpoint strips DataParallel's ``module.`` prefix), and the same
initialization (drawn in the same order: the same seed gives the same weights). Differences, none
of which touches a key or a weight:
  * the final pooling is a global average pool for both stems (the official ImageNet AvgPool2d(7)
    runs at 224x224 inputs only, the CIFAR F.avg_pool2d(x, 4) pools globally at 32x32 only; at
    those sizes the two agree), so any input size works;
  * BAM pools its channel branch over the whole H x W map (the official window is H x H, which
    differs on non-square maps), and the official BAM file's undefined ``gate_activation`` is
    gone (attnkernels.reference.bam lists its departures);
  * bad arguments raise ValueError instead of failing an assert.
Where the attention modules sit: BAM after stages 1, 2 and 3 (``bam1``-``bam3``, on 64, 128 and
256 x expansion channels); CBAM inside every residual block (``layerK.i.cbam``), on the block's
output before the residual addition.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

__all__ = ["ResidualNet", "ResNet", "BasicBlock", "Bottleneck", "load_official_checkpoint"]

NETWORK_TYPES = ("ImageNet", "CIFAR10", "CIFAR100")
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
ATT_TYPES = ("BAM", "CBAM", None)


def _attention_classes():
    """(BAM, CBAM): the classes ResidualNet builds its attention modules from: the fused drop-ins
    (the official constructors, submodules and state_dicts; eager where the kernels cannot run)."""
    from .bam import BAM
    from .cbam import CBAM
    return BAM, CBAM


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _block_output(block, x, out):
    """A residual block's end, as in the official blocks: CBAM on the residual branch's output,
    then the shortcut (downsampled where the shape changes) added in place, then ReLU."""
    residual = x if block.downsample is None else block.downsample(x)
    if block.cbam is not None:
        out = block.cbam(out)
    out += residual
    return block.relu(out)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, use_cbam=False):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.cbam = _attention_classes()[1](planes, 16) if use_cbam else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return _block_output(self, x, self.bn2(self.conv2(out)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, use_cbam=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.cbam = _attention_classes()[1](planes * 4, 16) if use_cbam else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return _block_output(self, x, self.bn3(self.conv3(out)))


class ResNet(nn.Module):
    """The official ResNet(block, layers, network_type, num_classes, att_type). The submodules are
    created in the official order, so the default initializations draw the same random numbers."""

    def __init__(self, block, layers, network_type, num_classes, att_type=None):
        super().__init__()
        self.inplanes = 64
        self.network_type = network_type
        # different model config between ImageNet and CIFAR
        if network_type == "ImageNet":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        # parameter-free, as the official AvgPool2d(7) / F.avg_pool2d(x, 4), but global
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        if att_type == "BAM":
            bam = _attention_classes()[0]
            self.bam1 = bam(64 * block.expansion)
            self.bam2 = bam(128 * block.expansion)
            self.bam3 = bam(256 * block.expansion)
        else:
            self.bam1, self.bam2, self.bam3 = None, None, None

        self.layer1 = self._make_layer(block, 64, layers[0], att_type=att_type)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, att_type=att_type)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, att_type=att_type)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, att_type=att_type)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _official_init(self)

    def _make_layer(self, block, planes, blocks, stride=1, att_type=None):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, use_cbam=att_type == "CBAM")]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, use_cbam=att_type == "CBAM"))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.network_type == "ImageNet":
            x = self.maxpool(x)
        x = self.layer1(x)
        if self.bam1 is not None:
            x = self.bam1(x)
        x = self.layer2(x)
        if self.bam2 is not None:
            x = self.bam2(x)
        x = self.layer3(x)
        if self.bam3 is not None:
            x = self.bam3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        return self.fc(x.flatten(1))


@torch.no_grad()
def _official_init(model: nn.Module):
    """The official initialization, by state_dict key as the official loop goes: the fc weight
    Kaiming-normal (fan_in) first, then in key order every '*weight' with 'conv' in its key
    Kaiming-normal fan_out (the downsample convs, 'downsample.0', keep their default init), every
    '*weight' with 'bn' in its key 1, except the CBAM spatial gate's BN weight, 0 (so each CBAM
    block starts with a constant spatial gate, sigmoid(0)), and every '*bias' 0 (the Linear
    layers' weights keep their default init)."""
    nn.init.kaiming_normal_(model.fc.weight)
    state = model.state_dict()
    for key, t in state.items():
        last = key.split(".")[-1]
        if last == "weight":
            if "conv" in key:
                nn.init.kaiming_normal_(t, mode="fan_out")
            if "bn" in key:
                t.fill_(0 if "SpatialGate" in key else 1)
        elif last == "bias":
            t.zero_()


def ResidualNet(network_type: str, depth: int, num_classes: int = 1000,
                att_type: Optional[str] = None) -> ResNet:
    """The official ResidualNet(network_type, depth, num_classes, att_type).

    network_type: "ImageNet" (7x7 stride-2 stem + max pool) or "CIFAR10" / "CIFAR100" (3x3
    stride-1 stem); depth: 18, 34 (BasicBlock) or 50, 101 (Bottleneck); att_type: "BAM" (after
    stages 1-3), "CBAM" (in every block) or None (plain ResNet).
    """
    if network_type not in NETWORK_TYPES:
        raise ValueError(f"network_type must be one of {NETWORK_TYPES}, got {network_type!r}")
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {tuple(DEPTHS)}, got {depth!r}")
    if att_type not in ATT_TYPES:
        raise ValueError(f"att_type must be one of {ATT_TYPES}, got {att_type!r}")
    kind, layers = DEPTHS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    return ResNet(block, list(layers), network_type, num_classes, att_type)


def load_official_checkpoint(model: nn.Module, path_or_state_dict: Union[str, os.PathLike, dict],
                             strict: bool = True, map_location="cpu"):
    """Load an official checkpoint into `model` (a ResidualNet): a path (the released
    ``*.pth.tar``: a dict whose "state_dict" is a DataParallel model's), such a dict, or a state
    dict. The ``module.`` prefix of DataParallel / DistributedDataParallel keys is removed; a
    BatchNorm's num_batches_tracked missing from the file (checkpoints older than torch 0.4.1) is
    filled in as torch does for such state dicts. Returns load_state_dict's result (strict by
    default: every key must match)."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        ckpt = torch.load(path_or_state_dict, map_location=map_location, weights_only=True)
    else:
        ckpt = path_or_state_dict
    if not isinstance(ckpt, dict):
        raise TypeError(f"expected a checkpoint dict or a state dict, got {type(ckpt).__name__}")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict):
        raise TypeError(f"the checkpoint's 'state_dict' is a {type(state).__name__}, not a dict")
    prefixed = bool(state) and all(k.startswith("module.") for k in state)
    # a plain dict, without the file's _metadata: BatchNorm then fills in a missing
    # num_batches_tracked as it does for state dicts of its first version
    state = {(k[len("module."):] if prefixed else k): v for k, v in state.items()}
    return model.load_state_dict(state, strict=strict)
