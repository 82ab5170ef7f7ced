"""Our from-scratch models against Hugging Face diffusers at the same architecture and size (issue 7).

Matched pairs (parameter counts asserted equal within 1%, printed side by side):
- UNet: ours vs ``UNet2DConditionModel`` built by ``diffusers_unet_like(cfg)`` (same widths, levels, attention
  placement, heads, context width, time-embedding width, GroupNorm groups, scale-shift norm). Our weights are copied
  into it, so both compute the same function (checked on one forward pass).
- autoencoder: ours vs ``AutoencoderKL`` built by ``diffusers_vae_like(cfg)``, ours with diffusers' single GroupNorm
  group count (``norm_groups``); our weights are copied into it and encode and decode are checked to agree.
- sampling, 50 DDIM steps with classifier-free guidance (scale 3) at batch B:
  (a) our ``ddim_sample`` on our UNet, (b) diffusers' ``DDIMScheduler`` driving our UNet with the same guidance,
  (c) diffusers' ``StableDiffusionPipeline`` (prompt embeddings given, latent output) on the matched UNet.
  All three start from the same x_T; the max |difference| of their samples is recorded as a correctness check.

Timing: R rounds (default 21) after one warm-up; in every round each contender runs once, interleaved, on the
same inputs. A row's ratio is the median over rounds of the per-round ratio ours/theirs throughput, with a
distribution-free 95% interval for that median (order statistics) and a verdict: "faster" (interval above 1),
"slower" (below 1) or "same" (contains 1). Pairing within a round cancels the slow drifts of a shared machine.
UNet and autoencoder rows also time diffusers run channels-last (``.to(memory_format=torch.channels_last)``, the
layout our models use on the CPU; see ``ldm_minimal.utils.ChannelsLastOnCPU``), reported beside the default.
On the CPU the clock is process CPU time (``time.process_time``; with --threads 1 this is what one core spends,
and it is barely disturbed by other processes); on CUDA it is wall time with synchronisation. Forward-only passes
run under ``torch.inference_mode``. Ratios are ours_throughput / theirs_throughput (> 1 = we are faster; for
sampling, theirs_seconds / ours_seconds).

On CUDA the run adds bf16-autocast and ``torch.compile`` rows and, for the training step (forward + backward, bf16)
of each UNet size, the achieved matmul throughput: FLOPs counted by ``torch.utils.flop_counter`` divided by the
step's time, as a fraction of a measured 8192^3 bf16 matmul and of the data-sheet peak.

Peak memory: CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the step. CPU: tracemalloc does
not see torch's allocations, and ``ru_maxrss`` is a process-lifetime high-water mark, so we reset the kernel's
high-water mark (``echo 5 > /proc/self/clear_refs``) before one step and read ``VmHWM - VmRSS`` (peak resident
memory above the level before the step) afterwards. These CPU measurements run last, after every timing, with glibc's
mmap threshold set to 64 KiB (``mallopt``) so that freed tensors leave the resident set instead of staying in the
heap. On a non-Linux machine the CPU memory rows are skipped with a reason.

    python benchmarks/peer.py --threads 1                 # full run -> docs/results/peer.json (+ markdown table)
    python benchmarks/peer.py --quick --out /tmp/peer.json  # smoke run: tiny size, 1 repeat, batch 2, 10 steps

With --quick and no --out the file goes to docs/results/quick/peer.json. An existing --out file is kept unless --overwrite.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ldm_minimal.autoencoder import AutoencoderConfig, AutoencoderKL, autoencoder_config, num_groups  # noqa: E402
from ldm_minimal.diffusion import GaussianDiffusion  # noqa: E402
from ldm_minimal.interop import autoencoder_diffusers_names, unet_diffusers_names  # noqa: E402
from ldm_minimal.latent_diffusion_config import ldm_config  # noqa: E402
from ldm_minimal.samplers import ddim_sample, ddim_timesteps  # noqa: E402
from ldm_minimal.unet import UNet, UNetConfig, unet_config  # noqa: E402

PARAM_TOLERANCE = 0.01  # matched parameter counts must agree within 1%


# ============================================================================================== matched builders
def _unet_block_types(cfg: UNetConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    attn = [2**level in cfg.attention_factors for level in range(cfg.levels)]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    return down, up


def diffusers_unet_like(cfg: UNetConfig):
    """A diffusers ``UNet2DConditionModel`` with our UNet's architecture (same layers, same parameter count).

    - block_out_channels = model_channels * channel_mult, layers_per_block = num_res_blocks (diffusers' up blocks
      have layers_per_block + 1 ResNets, like ours);
    - CrossAttn blocks exactly at our attention levels; the mid block always has one (as ours does);
    - heads: diffusers' ``attention_head_dim`` argument is, for historical reasons, the NUMBER of heads
      (diffusers issue 2011); we pass our per-level head count (width // dim_head, or num_heads), one per level;
    - cross_attention_dim = context_dim, transformer_layers_per_block = transformer_depth;
    - resnet_time_scale_shift = "scale_shift" if use_scale_shift_norm else "default";
    - norm_num_groups = our norm_groups (8 in the tiny preset, 32 elsewhere: our UNet uses one group count for every
      GroupNorm, as diffusers does, so the layers are identical, GroupNorm statistics included);
    - time embedding: sinusoid of width model_channels, cosines first (flip_sin_to_cos=True, freq_shift=0), then
      Linear(mc, 4 mc), SiLU, Linear(4 mc, 4 mc): diffusers' default time_embedding_dim = 4 * block_out_channels[0];
    - class-conditional models: num_class_embeds = num_classes + 1 (our extra row is the null class).
    Remaining difference: none in the parameters (same names up to layout, see ``ldm_minimal.interop.unet_diffusers_names``). In the
    computation, diffusers' self-attention and ours both use SDPA; ours validates its inputs on every call.
    """
    from diffusers import UNet2DConditionModel

    if cfg.context_dim is None:
        raise ValueError("diffusers_unet_like needs a UNet with cross-attention (context_dim set): a diffusers "
                         "UNet2DConditionModel always has cross-attention.")
    widths = tuple(cfg.model_channels * m for m in cfg.channel_mult)
    heads = tuple(cfg.heads_for(w)[0] for w in widths)
    down, up = _unet_block_types(cfg)
    return UNet2DConditionModel(
        sample_size=None, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=widths, layers_per_block=cfg.num_res_blocks,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=heads, cross_attention_dim=cfg.context_dim,
        transformer_layers_per_block=cfg.transformer_depth, norm_num_groups=cfg.norm_groups, norm_eps=1e-5,
        resnet_time_scale_shift="scale_shift" if cfg.use_scale_shift_norm else "default",
        flip_sin_to_cos=True, freq_shift=0, time_embedding_dim=4 * cfg.model_channels,
        num_class_embeds=None if cfg.num_classes is None else cfg.num_classes + 1,
        dropout=cfg.dropout, use_linear_projection=False, upcast_attention=False,
    )


def diffusers_vae_like(cfg: AutoencoderConfig):
    """A diffusers ``AutoencoderKL`` with our KL autoencoder's architecture (same parameter count).

    block_out_channels = ch * ch_mult, layers_per_block = num_res_blocks (the decoder has one more per level in
    both), latent_channels = embed_dim (= z_channels in every preset), mid-block attention (single head) in both,
    Attn*Block2D at our attn_resolutions. GroupNorm: diffusers has one norm_num_groups for every layer; we pass
    ``cfg.norm_groups`` when it is set (the benchmark sets it, so both models compute the same function) and
    otherwise ``matched_norm_groups(cfg)`` (our presets' default, num_groups(width) per layer, uses 16 groups at
    width 64 in the tiny presets). Our 1x1-conv q/k/v/proj of the attention blocks are diffusers' Linear layers (same
    parameters; ``ldm_minimal.interop.autoencoder_diffusers_names`` maps the names).
    """
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    if cfg.kind != "kl":
        raise ValueError("diffusers_vae_like maps KL autoencoders only.")
    if cfg.z_channels != cfg.embed_dim:
        raise ValueError("diffusers' AutoencoderKL has one latent width: needs z_channels == embed_dim.")
    widths = tuple(cfg.ch * m for m in cfg.ch_mult)
    groups = cfg.norm_groups or matched_norm_groups(cfg)
    attn = [2**i in cfg.attn_resolutions for i in range(len(widths))]
    return DiffusersAutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, block_out_channels=widths,
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)),
        layers_per_block=cfg.num_res_blocks, latent_channels=cfg.embed_dim, norm_num_groups=groups,
        act_fn="silu", mid_block_add_attention=True,
    )


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_params(kind: str, ours: int, theirs: int) -> dict:
    rel = abs(ours - theirs) / theirs
    print(f"[params] {kind}: ours {ours:,} vs diffusers {theirs:,} (relative difference {rel:.2e})")
    assert rel <= PARAM_TOLERANCE, f"{kind}: parameter counts differ by {rel:.2%} (> 1%): the configs are not matched"
    return {"ours": ours, "theirs": theirs, "relative_difference": rel}


# ============================================================================================== timing helpers
class Clock:
    """CUDA: synchronised wall time. CPU with one thread: process CPU time. CPU with several threads: wall time
    (process time would add up the threads' CPU time instead of measuring throughput)."""

    def __init__(self, device: torch.device, threads: int) -> None:
        self.device = device
        self.cpu_time = device.type == "cpu" and threads == 1
        self.name = ("process CPU time" if self.cpu_time else
                     "wall time (CUDA synchronised)" if device.type == "cuda" else "wall time")

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.process_time() if self.cpu_time else time.perf_counter()


def time_group(fns: dict, clock: Clock, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds, the functions interleaved in every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = clock()
            fn()
            times[key].append(clock() - t0)
    return times


def forward_pass(model: torch.nn.Module, call):
    """A timed forward pass: ``call(model)`` under ``torch.inference_mode``."""
    def run():
        with torch.inference_mode():
            call(model)
    return run


def training_step(model: torch.nn.Module, call):
    """A timed training step: ``call(model)``, a mean-square loss, backward; the gradients are cleared after."""
    def run():
        call(model).square().mean().backward()
        model.zero_grad(set_to_none=True)
    return run


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median and a distribution-free confidence interval for it (order statistics of the sorted sample).

    The interval [v_(k), v_(n+1-k)] covers the true median with probability >= ``confidence`` when k is the
    largest integer with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. With fewer than 6 values no such
    k exists at 95%, and the interval is the sample's range.
    """
    v = sorted(values)
    n = len(v)
    tail, k = 0.0, 0
    while k < n:
        p = math.comb(n, k) / 2**n
        if tail + p > (1 - confidence) / 2:
            break
        tail += p
        k += 1
    lo, hi = (v[k - 1], v[n - k]) if k > 0 else (v[0], v[-1])
    return statistics.median(v), lo, hi


def paired_ratio(t_ours: list[float], t_theirs: list[float]) -> dict:
    """ours/theirs throughput per round (= t_theirs / t_ours of the same round), its median and 95% interval.

    Pairing the two measurements of one round cancels the slow drifts of a shared machine (clock speed, other
    processes), which move both; the verdict says whether the interval lies above 1, below 1, or contains it.
    """
    m, lo, hi = median_ci([b / a for a, b in zip(t_ours, t_theirs)])
    verdict = "faster" if lo > 1 else "slower" if hi < 1 else "same (interval contains 1)"
    return {"ratio": m, "ratio_ci95": [lo, hi], "verdict": verdict, "rounds": len(t_ours)}


def throughput_row(name: str, size: str, batch: int, t_ours: list[float], t_theirs: list[float],
                   extra: dict | None = None) -> dict:
    s_ours, s_theirs = statistics.median(t_ours), statistics.median(t_theirs)
    row = {"measurement": name, "size": size, "batch": batch, "unit": "images/s", "ours": batch / s_ours,
           "theirs": batch / s_theirs, **paired_ratio(t_ours, t_theirs),
           "ours_seconds_per_batch": s_ours, "theirs_seconds_per_batch": s_theirs}
    row.update(extra or {})
    return row


def without_channels_last(model: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of our model in the usual N, C, H, W layout (None where ours is not channels-last anyway: CUDA)."""
    if next(model.parameters()).device.type != "cpu" or not getattr(model, "cpu_channels_last", False):
        return None
    twin = copy.deepcopy(model)
    twin.cpu_channels_last = False
    twin.prefer_layout()
    return twin


def layout_entries(batch: int, tg: dict[str, list[float]]) -> dict:
    """The memory-layout comparisons of the same rounds: ours against diffusers run channels-last
    (``.to(memory_format=torch.channels_last)``), and ours without channels-last against diffusers' default."""
    out = {"vs_diffusers_channels_last": {"theirs": batch / statistics.median(tg["theirs_cl"]),
                                          **paired_ratio(tg["ours"], tg["theirs_cl"])}}
    if "ours_nchw" in tg:
        out["ours_without_channels_last"] = {"ours": batch / statistics.median(tg["ours_nchw"]),
                                             **paired_ratio(tg["ours_nchw"], tg["theirs"])}
    return out


# Dense bf16 matmul peak of common GPUs (vendor data sheets, TFLOP/s without sparsity), for the utilisation figure.
SPEC_BF16_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0,
                    "A100": 312.0, "L4": 121.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}


def training_step_flops(model: torch.nn.Module, call) -> int:
    """Floating-point operations of one forward + backward pass (torch.utils.flop_counter: matmuls, convolutions,
    attention; 2 per multiply-add), counted on the real shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        training_step(model, call)()
    return int(counter.get_total_flops())


def matmul_peak_tflops(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matmul throughput (n x n times n x n), the achievable peak of this device."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e12


def matmul_utilisation(model: torch.nn.Module, call, seconds: float, device: torch.device) -> dict:
    """Achieved fraction of the GPU's matmul peak for one bf16 training step that took ``seconds``."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        flops = training_step_flops(model, call)
    achieved = flops / seconds / 1e12
    name = torch.cuda.get_device_name(device)
    spec = next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name), None)
    measured = matmul_peak_tflops(device)
    return {"flops_per_step": flops, "seconds_per_step": seconds, "achieved_tflops": achieved,
            "matmul_peak_measured_tflops": measured, "fraction_of_measured_peak": achieved / measured,
            "spec_bf16_tflops": spec, "fraction_of_spec_peak": achieved / spec if spec else None, "gpu": name}


# ============================================================================================== CPU peak memory
class CpuPeak:
    """Peak resident memory of one call above the resident level before it (Linux: VmHWM reset via clear_refs)."""

    def __init__(self) -> None:
        self.reason = None
        if not sys.platform.startswith("linux"):
            self.reason = "CPU peak memory needs Linux (/proc/self/clear_refs); skipped"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError as e:
            self.reason = f"cannot reset the resident high-water mark ({e}); skipped"
            return
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: tensors >= 64 KiB get their own mapping, freed to the OS
            libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
            self._trim = lambda: libc.malloc_trim(0)
        except OSError:
            self._trim = lambda: None

    @staticmethod
    def _status_kb(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def __call__(self, fn) -> int:
        gc.collect()
        self._trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = self._status_kb("VmRSS")
        fn()
        peak = self._status_kb("VmHWM")
        return max(0, peak - before) * 1024


def peak_bytes(fn, device: torch.device, cpu_peak: CpuPeak | None) -> int | None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if cpu_peak is None or cpu_peak.reason:
        return None
    fn()  # warm-up outside the measured window (lazy initialisations)
    return cpu_peak(fn)


# ============================================================================================== UNet
SIZES = {
    # latent 16x16 with the shapes-t2i context (tokens x width); batch on CPU / on CUDA
    "tiny": {"preset": "tiny", "latent": 16, "batch_cpu": 8, "batch_cuda": 64},
    "default": {"preset": "default", "latent": 16, "batch_cpu": 4, "batch_cuda": 32},
}


def t2i_context_shape() -> tuple[int, int]:
    """(tokens, width) of the shapes-t2i conditioner: max_length and width of its text encoder."""
    kw = ldm_config("shapes-t2i").conditioner_kwargs
    return int(kw["max_length"]), int(kw["width"])


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (our zero-initialised output layers would make every output exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:  # conv / linear / embedding: variance-preserving normal
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith("weight"):  # norm scales near 1
                p.copy_(1 + 0.02 * torch.randn(p.shape, generator=g))
            else:  # biases near 0
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def build_unet_pair(size: str, device: torch.device, seed: int = 0):
    tokens, width = t2i_context_shape()
    cfg = unet_config(SIZES[size]["preset"], context_dim=width)
    torch.manual_seed(seed)
    ours = UNet(cfg)
    _perturb(ours, seed)
    theirs = diffusers_unet_like(cfg)
    names = unet_diffusers_names(ours)
    their_sd = theirs.state_dict()
    if sorted(names.values()) == sorted(their_sd):
        theirs.load_state_dict({names[n]: v for n, v in ours.state_dict().items()})
        same_weights = True
    else:  # not expected for the presets: the architectures would differ in layout (the param check still runs)
        same_weights = False
    return cfg, ours.to(device).eval(), theirs.to(device).eval(), same_weights, (tokens, width)


def unet_rows(size: str, batch: int, device: torch.device, clock: Clock, repeats: int, mem: list) -> tuple[list, dict]:
    cfg, ours, theirs, same_weights, (tokens, width) = build_unet_pair(size, device)
    params = check_params(f"UNet {size}", n_params(ours), n_params(theirs))
    g = torch.Generator().manual_seed(1)
    h = SIZES[size]["latent"]
    x = torch.randn(batch, cfg.in_channels, h, h, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    ctx = torch.randn(batch, tokens, width, generator=g).to(device)

    with torch.inference_mode():
        a, b = ours(x, t, ctx), theirs(x, t, ctx, return_dict=False)[0]
    max_diff = float((a - b).abs().max())
    info = {"params": params, "same_weights": same_weights, "forward_max_abs_difference": max_diff,
            "forward_output_max_abs": float(a.abs().max()),
            "config": cfg.to_dict(), "input": f"{cfg.in_channels}x{h}x{h} + context {tokens}x{width}"}
    print(f"[check] UNet {size}: same weights={same_weights}, forward max |ours - diffusers| = {max_diff:.2e} "
          f"(output max |eps| {float(a.abs().max()):.2f})")

    call_ours = lambda m: m(x, t, ctx)  # noqa: E731
    call_theirs = lambda m: m(x, t, ctx, return_dict=False)[0]  # noqa: E731
    # diffusers as a user who knows the trick would run it: weights and input channels-last
    theirs_cl = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    call_theirs_cl = lambda m: m(x_cl, t, ctx, return_dict=False)[0]  # noqa: E731
    ours_nchw = without_channels_last(ours)
    extra = {"input": info["input"], "params_ours": params["ours"], "params_theirs": params["theirs"]}
    rows = []
    for name, wrap in (("unet forward", forward_pass), ("unet forward+backward", training_step)):
        fns = {"ours": wrap(ours, call_ours), "theirs": wrap(theirs, call_theirs),
               "theirs_cl": wrap(theirs_cl, call_theirs_cl)}
        if ours_nchw is not None:
            fns["ours_nchw"] = wrap(ours_nchw, call_ours)
        tg = time_group(fns, clock, repeats)
        rows.append(throughput_row(name, size, batch, tg["ours"], tg["theirs"], {**extra, **layout_entries(batch, tg)}))
    del theirs_cl, ours_nchw

    if device.type == "cuda":
        def bf16(fn):
            def run():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    fn()
            return run
        tg = time_group({"ours": bf16(forward_pass(ours, call_ours)),
                         "theirs": bf16(forward_pass(theirs, call_theirs))}, clock, repeats)
        rows.append(throughput_row("unet forward bf16 autocast", size, batch, tg["ours"], tg["theirs"], extra))
        tg = time_group({"ours": bf16(training_step(ours, call_ours)),
                         "theirs": bf16(training_step(theirs, call_theirs))},
                        clock, repeats)
        rows.append(throughput_row("unet forward+backward bf16 autocast", size, batch, tg["ours"], tg["theirs"], extra))
        info["training_step_bf16"] = matmul_utilisation(ours, call_ours, statistics.median(tg["ours"]), device)
        try:
            c_ours, c_theirs = torch.compile(ours), torch.compile(theirs)
            tg = time_group({"ours": forward_pass(c_ours, call_ours), "theirs": forward_pass(c_theirs, call_theirs)},
                            clock, repeats,
                            warmup=2)
            rows.append(throughput_row("unet forward torch.compile", size, batch, tg["ours"], tg["theirs"], extra))
        except Exception as e:  # compile needs a working toolchain (triton); record why not
            rows.append({"measurement": "unet forward torch.compile", "size": size, "skipped": f"{type(e).__name__}: {e}"})
    else:
        for name in ("unet forward bf16 autocast", "unet forward+backward bf16 autocast", "unet forward torch.compile"):
            rows.append({"measurement": name, "size": size, "skipped": "CUDA not available (CPU run)"})

    # peak memory: measured later (after all timings) on the CPU, see CpuPeak
    mem.append(("unet forward", size, batch, forward_pass(ours, call_ours), forward_pass(theirs, call_theirs)))
    mem.append(("unet forward+backward", size, batch, training_step(ours, call_ours),
                training_step(theirs, call_theirs)))
    return rows, info


# ============================================================================================== autoencoder
AE_SIZES = {
    # our preset, image size, batch on CPU / CUDA
    "tiny": {"preset": "tiny-kl-f4", "image": 32, "batch_cpu": 8, "batch_cuda": 64},
    "default": {"preset": "kl-f4", "image": 64, "batch_cpu": 2, "batch_cuda": 16},
}


def ae_rows(size: str, batch: int, device: torch.device, clock: Clock, repeats: int) -> tuple[list, dict]:
    preset = AE_SIZES[size]["preset"]
    # diffusers has one GroupNorm group count; ours is built with the same one (norm_groups), so both compute the
    # same function (our presets' per-width counts differ from it only at the tiny widths)
    groups = matched_norm_groups(autoencoder_config(preset))
    cfg = autoencoder_config(preset, norm_groups=groups)
    torch.manual_seed(0)
    ours = AutoencoderKL(cfg).eval()
    _perturb(ours, 4)
    theirs = diffusers_vae_like(cfg).eval()
    names, their_sd = autoencoder_diffusers_names(ours), theirs.state_dict()
    theirs.load_state_dict({names[n]: v.reshape(their_sd[names[n]].shape) for n, v in ours.state_dict().items()})
    ours, theirs = ours.to(device), theirs.to(device)
    params = check_params(f"autoencoder {size} ({preset})", n_params(ours), n_params(theirs))
    g = torch.Generator().manual_seed(2)
    s = AE_SIZES[size]["image"]
    x = (torch.rand(batch, cfg.in_channels, s, s, generator=g) * 2 - 1).to(device)
    z = torch.randn(batch, cfg.embed_dim, s // cfg.f, s // cfg.f, generator=g).to(device)
    with torch.inference_mode():
        enc_o, enc_t = ours.encode(x).mean, theirs.encode(x).latent_dist.mean
        dec_o, dec_t = ours.decode(z), theirs.decode(z).sample
    check = {"norm_groups": groups, "encode_max_abs_difference": float((enc_o - enc_t).abs().max()),
             "encode_output_max_abs": float(enc_o.abs().max()),
             "decode_max_abs_difference": float((dec_o - dec_t).abs().max()),
             "decode_output_max_abs": float(dec_o.abs().max())}
    print(f"[check] autoencoder {size}: same weights, GroupNorm groups {groups}: encode max |ours - diffusers| = "
          f"{check['encode_max_abs_difference']:.2e}, decode {check['decode_max_abs_difference']:.2e}")
    theirs_cl = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    x_cl, z_cl = x.contiguous(memory_format=torch.channels_last), z.contiguous(memory_format=torch.channels_last)
    ours_nchw = without_channels_last(ours)

    extra = {"input": f"{cfg.in_channels}x{s}x{s} <-> {cfg.embed_dim}x{s // cfg.f}x{s // cfg.f}",
             "params_ours": params["ours"], "params_theirs": params["theirs"], "preset": preset, "norm_groups": groups}
    rows = []
    for name, fns in (
        ("autoencoder encode", {"ours": forward_pass(ours, lambda m: m.encode(x).mean),
                                "theirs": forward_pass(theirs, lambda m: m.encode(x).latent_dist.mean),
                                "theirs_cl": forward_pass(theirs_cl, lambda m: m.encode(x_cl).latent_dist.mean)}
         | ({"ours_nchw": forward_pass(ours_nchw, lambda m: m.encode(x).mean)} if ours_nchw is not None else {})),
        ("autoencoder decode", {"ours": forward_pass(ours, lambda m: m.decode(z)),
                                "theirs": forward_pass(theirs, lambda m: m.decode(z).sample),
                                "theirs_cl": forward_pass(theirs_cl, lambda m: m.decode(z_cl).sample)}
         | ({"ours_nchw": forward_pass(ours_nchw, lambda m: m.decode(z))} if ours_nchw is not None else {})),
    ):
        tg = time_group(fns, clock, repeats)
        rows.append(throughput_row(name, size, batch, tg["ours"], tg["theirs"], {**extra, **layout_entries(batch, tg)}))
    return rows, {"params": params, "config": dataclass_dict(cfg), "check": check}


def matched_norm_groups(cfg: AutoencoderConfig) -> int:
    """The one GroupNorm group count for both models: the largest that divides every width and is at most our
    per-width count at the narrowest level (32 for the paper's widths, 8 for the tiny presets)."""
    widths = [cfg.ch * m for m in cfg.ch_mult]
    groups = min(num_groups(w) for w in widths)
    while any(w % groups for w in widths):
        groups -= 1
    return groups


def dataclass_dict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


# ============================================================================================== sampling
def matched_ddim_scheduler(diffusion: GaussianDiffusion):
    """diffusers' DDIMScheduler on our schedule: scaled_linear with our beta_start/beta_end, leading spacing with
    steps_offset=1 (our ddim_timesteps), set_alpha_to_one=False (our last step goes to alpha_bar_0), no clipping."""
    from diffusers import DDIMScheduler

    c = diffusion.cfg
    if c.schedule not in ("scaled_linear", "linear"):
        raise ValueError(f"no diffusers equivalent wired for schedule {c.schedule!r}")
    return DDIMScheduler(num_train_timesteps=c.T, beta_start=c.beta_start, beta_end=c.beta_end,
                         beta_schedule=c.schedule, steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                         timestep_spacing="leading", prediction_type="epsilon" if c.parameterization == "eps" else "v_prediction")


def guided_ddim_ours(model, diffusion: GaussianDiffusion, x_T, ctx, null, guidance: float, steps: int):
    """(a) our ``ddim_sample`` with classifier-free guidance from x_T."""
    return ddim_sample(model, diffusion, None, steps=steps, cond={"context": ctx}, uncond={"context": null},
                       guidance_scale=guidance, x_T=x_T, progress=False).samples


def guided_ddim_scheduler(model, sched, x_T, ctx, null, guidance: float, steps: int):
    """(b) diffusers' DDIMScheduler driving ``model`` with the same guidance: one batched call on [null; cond]."""
    sched.set_timesteps(steps)
    x = x_T.clone()
    with torch.inference_mode():
        both = torch.cat([null, ctx])
        for t in sched.timesteps:
            out_u, out_c = model(torch.cat([x, x]), t.reshape(1).expand(2 * x.shape[0]).to(x.device), both).chunk(2)
            x = sched.step(out_u + guidance * (out_c - out_u), t, x, eta=0.0, return_dict=False)[0]
    return x


def sampling_rows(size: str, batch: int, steps: int, device: torch.device, clock: Clock, repeats: int) -> tuple[list, dict]:
    from diffusers import StableDiffusionPipeline

    cfg, ours, theirs, same_weights, (tokens, width) = build_unet_pair(size, device)
    vae = diffusers_vae_like(autoencoder_config("tiny-kl-f4")).to(device).eval()  # only for the pipeline's f
    dcfg = ldm_config("shapes-t2i").diffusion_cfg()
    diffusion = GaussianDiffusion(dcfg).to(device)
    guidance = 3.0
    h = SIZES[size]["latent"]
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(batch, cfg.in_channels, h, h, generator=g).to(device)
    ctx = torch.randn(batch, tokens, width, generator=g).to(device)
    null = torch.randn(1, tokens, width, generator=g).expand(batch, -1, -1).contiguous().to(device)

    sched_b = matched_ddim_scheduler(diffusion)
    sched_b.set_timesteps(steps)
    ts_ours = ddim_timesteps(dcfg.T, steps)[::-1]
    assert sched_b.timesteps.tolist() == ts_ours, (sched_b.timesteps.tolist(), ts_ours)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=theirs,
                                   scheduler=matched_ddim_scheduler(diffusion), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run_a():
        return guided_ddim_ours(ours, diffusion, x_T, ctx, null, guidance, steps)

    def run_b():
        return guided_ddim_scheduler(ours, sched_b, x_T, ctx, null, guidance, steps)

    def run_c():
        with torch.inference_mode():
            return pipe(prompt_embeds=ctx, negative_prompt_embeds=null, height=h * pipe.vae_scale_factor,
                        width=h * pipe.vae_scale_factor, num_inference_steps=steps, guidance_scale=guidance,
                        eta=0.0, latents=x_T.clone(), output_type="latent", return_dict=False)[0]

    sa, sb, sc = run_a(), run_b(), run_c()
    diff_ab, diff_ac = float((sa - sb).abs().max()), float((sa - sc).abs().max())
    print(f"[check] sampling {size}: max |(a) - (b)| = {diff_ab:.2e}, max |(a) - (c)| = {diff_ac:.2e} "
          f"(sample scale {float(sa.abs().max()):.2f})")

    # the three timed together, interleaved; ratios per round: theirs_seconds / ours_seconds (> 1 = we are faster)
    tg = time_group({"a": run_a, "b": run_b, "c": run_c}, clock, repeats)
    med = {k: statistics.median(v) / batch for k, v in tg.items()}  # seconds per image
    base = {"size": size, "batch": batch, "unit": "s/image", "steps": steps, "guidance_scale": guidance,
            "input": f"{cfg.in_channels}x{h}x{h} + context {tokens}x{width}"}
    rows = [
        {"measurement": "sampling DDIM: ours vs diffusers DDIMScheduler on our UNet", **base,
         "ours": med["a"], "theirs": med["b"], **paired_ratio(tg["a"], tg["b"]), "max_abs_sample_difference": diff_ab},
        {"measurement": "sampling DDIM: ours vs diffusers pipeline on the matched UNet", **base,
         "ours": med["a"], "theirs": med["c"], **paired_ratio(tg["a"], tg["c"]), "max_abs_sample_difference": diff_ac},
    ]
    info = {"schedule": {"ours": {"schedule": dcfg.schedule, "beta_start": dcfg.beta_start, "beta_end": dcfg.beta_end,
                                  "T": dcfg.T, "timesteps": ts_ours},
                         "diffusers": {k: sched_b.config[k] for k in ("beta_schedule", "beta_start", "beta_end",
                                                                      "num_train_timesteps", "steps_offset",
                                                                      "timestep_spacing", "set_alpha_to_one",
                                                                      "clip_sample", "prediction_type")}},
            "max_abs_difference_a_b": diff_ab, "max_abs_difference_a_c": diff_ac, "same_weights": same_weights,
            "sample_max_abs": float(sa.abs().max()),
            "sampler_overhead_ms_per_step": sampler_overhead(diffusion, x_T, ctx, null, guidance, steps, clock, repeats)}
    return rows, info


def sampler_overhead(diffusion: GaussianDiffusion, x_T, ctx, null, guidance: float, steps: int, clock: Clock,
                     repeats: int) -> dict:
    """The samplers' own cost per step, the network left out: (a) and (b) above with a model that returns 0.1 x.
    Shows how much of a sampling row is the sampler (next to nothing) and how much the UNet."""
    model = lambda x, t, context=None: x * 0.1  # noqa: E731
    sched = matched_ddim_scheduler(diffusion)
    tg = time_group({"ours": lambda: guided_ddim_ours(model, diffusion, x_T, ctx, null, guidance, steps),
                     "theirs": lambda: guided_ddim_scheduler(model, sched, x_T, ctx, null, guidance, steps)},
                    clock, repeats)
    return {"ours": statistics.median(tg["ours"]) / steps * 1e3,
            "diffusers_scheduler": statistics.median(tg["theirs"]) / steps * 1e3}


# ============================================================================================== main
def markdown(rows: list[dict]) -> str:
    """The results as a markdown table (printed at the end of a run; benchmarks/performance_page.py writes the page)."""
    lines = ["| measurement | size | batch | ours | diffusers | unit | ratio [95% interval] | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['measurement']} | {r['size']} | | | | | skipped: {r['skipped']} | |")
            continue
        fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
        ratio = "n/a" if r.get("ratio") is None else f"{r['ratio']:.3f}"
        if "ratio_ci95" in r:
            ratio += " [{:.3f}, {:.3f}]".format(*r["ratio_ci95"])
        lines.append(f"| {r['measurement']} | {r['size']} | {r['batch']} | {fmt(r['ours'])} | {fmt(r['theirs'])} | "
                     f"{r['unit']} | {ratio} | {r.get('verdict', '')} |")
    lines += ["", "Ratios: images/s rows ours / diffusers; s/image rows diffusers / ours; MiB rows diffusers / ours. "
              "Above 1 means ours is faster (or uses less memory)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny size, 1 repeat, batch 2, 10 DDIM steps")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time of one core)")
    p.add_argument("--repeats", type=int, default=21, help="timed rounds per row (the 95%% interval needs >= 6)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps for the sampling rows")
    p.add_argument("--sizes", default="tiny,default", help="comma-separated subset of: " + ",".join(SIZES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON path (default docs/results/peer.json; with --quick "
                   "docs/results/quick/peer.json, so a smoke run never replaces the real results)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)

    out = Path(args.out) if args.out else ROOT / "docs" / "results" / ("quick" if args.quick else "") / "peer.json"
    if out.exists() and not args.overwrite:
        print(f"{out} exists; pass --overwrite to replace it (or choose another --out).", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = Clock(device, torch.get_num_threads())
    sizes = ["tiny"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    repeats = 1 if args.quick else args.repeats
    steps = 10 if args.quick else args.steps
    key = "batch_cuda" if device.type == "cuda" else "batch_cpu"

    rows: list[dict] = []
    params: dict = {}
    checks: dict = {}
    mem: list = []
    for size in sizes:
        batch = 2 if args.quick else SIZES[size][key]
        r, info = unet_rows(size, batch, device, clock, repeats, mem)
        rows += r
        params[f"unet:{size}"] = info["params"]
        checks[f"unet:{size}"] = {k: info[k] for k in ("same_weights", "forward_max_abs_difference",
                                                        "forward_output_max_abs", "input")}
        if "training_step_bf16" in info:
            checks[f"unet:{size}"]["training_step_bf16"] = info["training_step_bf16"]
    for size in sizes:
        batch = 2 if args.quick else AE_SIZES[size][key]
        r, info = ae_rows(size, batch, device, clock, repeats)
        rows += r
        params[f"autoencoder:{size}"] = info["params"]
        checks[f"autoencoder:{size}"] = info["check"]
    for size in sizes:
        if size != "tiny" and device.type != "cuda":
            continue  # 3 x 50 guided steps of the default UNet: minutes of CPU for no new information
        batch = 2 if args.quick else (4 if device.type != "cuda" else SIZES[size][key])
        r, info = sampling_rows(size, batch, steps, device, clock, repeats)
        rows += r
        checks[f"sampling:{size}"] = info

    # peak memory, last (the CPU measurement changes malloc's settings)
    cpu_peak = CpuPeak() if device.type == "cpu" else None
    for name, size, batch, fo, ft in mem:
        row = {"measurement": f"{name} peak memory", "size": size, "batch": batch, "unit": "MiB"}
        if cpu_peak is not None and cpu_peak.reason:
            row.update({"skipped": cpu_peak.reason})
        else:
            mo, mt = peak_bytes(fo, device, cpu_peak), peak_bytes(ft, device, cpu_peak)
            # memory is a cost: ratio theirs / ours (> 1 = we use less)
            row.update({"ours": mo / 2**20 if mo is not None else None, "theirs": mt / 2**20 if mt is not None else None,
                        "ratio": (mt / mo) if mo else None,
                        "ratio_meaning": "theirs_bytes / ours_bytes (> 1 = we use less)"})
        rows.append(row)

    import diffusers

    info = {
        "machine": f"{platform.machine()} {platform.processor()}".strip() or platform.platform(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "clock": clock.name, "repeats": repeats, "warmup": 1,
        "quick": args.quick, "command": "python benchmarks/peer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "ratio": "ours_throughput / theirs_throughput (> 1 = we are faster); sampling: theirs_s / ours_s; "
                 "memory: theirs_bytes / ours_bytes",
        "peak_memory_method": ("torch.cuda.max_memory_allocated above the step's starting allocation" if device.type == "cuda"
                               else "VmHWM - VmRSS around one step after resetting the high-water mark (clear_refs 5), "
                                    "glibc mmap threshold 64 KiB"),
    }
    result = {"info": info, "params": params, "checks": checks, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out)
    print()
    print(markdown(rows))
    print(f"\nwrote {out}")
    return 0


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
        return m.group(1).strip() if m else None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
