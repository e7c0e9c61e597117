"""`scratchlm plan`: what a training run needs before it runs — parameters, FLOPs, memory per
device, how many GPUs of a kind it fits on, how long it takes, and the compute-optimal length.

Everything here is arithmetic on the run config; nothing is built or allocated.

Memory is counted tensor by tensor from what our code does, for one device at the step's peak:

- the state that lives through the step: weights, gradients, AdamW's two fp32 moments (fp32
  params are their own master copy; bf16 autocast keeps the params in fp32), divided by the
  shard count where FSDP or ZeRO shards them and split by TP where it splits them;
- the tensors the forward pass saves for the backward pass, listed op by op from `Block.forward`
  (`_block_saved_per_token`) at micro_batch_size × block_size tokens in the dtype each op
  produces: under bf16 autocast the residual stream and norms stay fp32 and each linear casts
  its input to bf16 and keeps that copy. SDPA's flash and memory-efficient kernels keep q, k, v,
  the output and the log-sum-exp, never the T×T scores. With activation checkpointing a block
  keeps only its input, and one block is recomputed at a time in the backward pass;
- copies of the weights that exist beside them: autocast's bf16 casts of each fp32 matrix
  (kept for the backward pass), FSDP's gathered parameters;
- the temporaries at the step's three high points: the chunked head and cross-entropy at the
  end of the forward pass (`model/loss.py`: one chunk of logits at a time, but its loop still
  holds the previous chunk's softmax while it computes the next), the loss's gradients at the
  start of the backward pass, and the last block's backward (after its recomputation under
  checkpointing). The peak is the highest of the three.

Checked against live-tensor peaks measured on CPU by `bench/plan_memory.py` (one process, DDP,
FSDP2, tensor parallel). DeepSpeed ZeRO is not measured: it is counted as the ZeRO paper does
(16-bit weights and gradients, 12 bytes of optimizer state per parameter in its bf16 mode) and
gathers like FSDP under ZeRO-3. Not counted: the CUDA context, NCCL buffers and the caching
allocator's fragmentation, which depend on the machine (no fixed overhead term is added, as none
was measured here), and kernel workspaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from scratchlm.errors import UserError
from scratchlm.model.gpt import GPTConfig
from scratchlm.model.loss import CHUNK_ELEMENTS
from scratchlm.train.distributed import check_tensor_parallel
from scratchlm.train.metrics import GPU_PEAKS
from scratchlm.train.settings import ParallelConfig, RunConfig

if TYPE_CHECKING:
    from rich.table import Table

GiB = 2**30
MiB = 2**20

ASSUMED_VOCAB = 50_304
"""Vocabulary planned with when model.vocab_size is 0 (taken from the tokenizer at training
time): GPT-2's, padded to a multiple of 64."""

TOKENS_PER_PARAMETER = 20
"""Compute-optimal training tokens per parameter (Hoffmann et al. 2022, "Chinchilla")."""


@dataclass(frozen=True)
class GPU:
    """A GPU the planner knows: its memory and which row of `GPU_PEAKS` holds its peaks."""

    name: str
    """As the table prints it."""
    memory: int
    """Bytes of device memory, the total nvidia-smi reports (MiB × 2^20)."""
    peaks_key: str
    """Its key in `scratchlm.train.metrics.GPU_PEAKS` (bf16 and TF32 dense peaks)."""

    @property
    def peaks(self) -> tuple[float, float]:
        return GPU_PEAKS[self.peaks_key]


GPUS = {
    "a100-40gb": GPU("A100 40GB", 40_960 * MiB, "A100"),
    "a100-80gb": GPU("A100 80GB", 81_920 * MiB, "A100"),
    "h100": GPU("H100 80GB (SXM)", 81_559 * MiB, "H100"),
    "h200": GPU("H200 141GB", 143_771 * MiB, "H200"),
}


def find_gpu(name: str) -> GPU:
    gpu = GPUS.get(name.lower())
    if gpu is None:
        raise UserError(f"Unknown GPU {name!r}; choose one of: {', '.join(GPUS)}.")
    return gpu


# ---- parameters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """Parameter counts by where they sit, which is what sharding and TP act on."""

    token_embedding: int
    """The token embedding (vocab_size × n_embd), which a tied head shares."""
    position_embedding: int
    """Learned positions (0 with rotary embeddings)."""
    head: int
    """The untied output head (0 when it shares the token embedding)."""
    final_norm: int
    """The norm before the head."""
    block_split: int
    """Per block, what tensor parallelism splits: q, k, v, the MLP's up (and gate) with their
    biases, and both output projections' weights."""
    block_replicated: int
    """Per block, what every TP rank keeps whole: norms and the output projections' biases."""
    block_linear: int
    """Per block, parameters of linear layers (what autocast casts to 16 bits)."""
    n_layer: int
    """Blocks."""

    @property
    def block(self) -> int:
        return self.block_split + self.block_replicated

    @property
    def root(self) -> int:
        """Outside the blocks: embeddings, final norm, untied head (the FSDP root's parameters)."""
        return self.token_embedding + self.position_embedding + self.head + self.final_norm

    @property
    def total(self) -> int:
        return self.root + self.n_layer * self.block

    @property
    def non_embedding(self) -> int:
        """What `GPT.num_params(non_embedding=True)` counts: without positions and, when untied,
        without the token-embedding lookup (a tied embedding is the head's matmul)."""
        return self.total - self.position_embedding - (self.token_embedding if self.head else 0)

    def local_block(self, tp: int) -> int:
        """One block's parameters on a TP rank."""
        return self.block_split // tp + self.block_replicated

    def local_total(self, tp: int) -> int:
        """Per TP rank: blocks split, embeddings and head replicated (our TP leaves them whole)."""
        return self.root + self.n_layer * self.local_block(tp)


def count_params(model: GPTConfig) -> Params:
    """Parameters of `GPT(model)`, counted from the config."""
    C, F, hd = model.n_embd, model.mlp_hidden, model.head_dim
    q, kv = model.n_head * hd, model.n_kv_head * hd
    bias = int(model.bias)
    norm = C * (1 + bias) if model.norm == "layernorm" else C  # RMSNorm has no bias
    head_norm = hd * (1 + bias) if model.norm == "layernorm" else hd
    up_branches = 2 if model.mlp == "swiglu" else 1
    split = (C * q + q * bias) + 2 * (C * kv + kv * bias) + q * C + up_branches * (C * F + F * bias) + F * C
    replicated = 2 * norm + 2 * C * bias + (2 * head_norm if model.qk_norm else 0)
    linear = split + 2 * C * bias
    return Params(
        token_embedding=model.vocab_size * C,
        position_embedding=model.block_size * C if model.position == "learned" else 0,
        head=0 if model.tie_embeddings else model.vocab_size * C,
        final_norm=norm,
        block_split=split,
        block_replicated=replicated,
        block_linear=linear,
        n_layer=model.n_layer,
    )


def flops_per_token(model: GPTConfig, params: Params) -> float:
    """Training FLOPs per token as `GPT.flops_per_token`: 6 per matmul parameter plus attention
    scores (12 · n_layer · n_embd · block_size)."""
    return 6 * params.non_embedding + 12 * model.n_layer * model.n_embd * model.block_size


# ---- precision ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of tensor in a run, and the dtype rules that decide them."""

    param: int
    """Stored parameters (fp32, or bf16 under DeepSpeed's bf16 mode)."""
    compute: int
    """Matmul inputs and outputs: 2 under bf16/fp16, 4 in fp32."""
    residual: int
    """The residual stream: the embeddings' dtype (that of the weights the forward pass uses)."""
    autocast: bool
    """The forward pass runs under autocast (the torch backend in 16 bits)."""
    cast_weights: bool
    """Autocast casts fp32 weights to 16 bits (once per forward pass, kept for the backward)."""
    gathered: int
    """Bytes per parameter FSDP / ZeRO-3 gathers (16-bit with FSDP mixed precision)."""
    gradient: int
    """Gradients as kept between micro-batches (fp32, or bf16 under DeepSpeed's bf16 mode)."""
    optimizer: int
    """Optimizer state per parameter: AdamW's two fp32 moments (8), plus an fp32 master copy (4)
    when the parameters are 16-bit."""
    cuda: bool
    """Planned for CUDA, whose autocast runs LayerNorm in fp32 and whose LayerNorm keeps fp32
    statistics; on a CPU (the bench that checks this model) both follow the input's dtype."""


def precision(dtype: str, parallel: ParallelConfig, fsdp: int, device: str = "cuda") -> Precision:
    """The bytes of each kind of tensor for train.dtype (auto = bf16 on the GPUs planned for)."""
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise UserError(f"Unknown train.dtype {dtype!r}; choose auto, bfloat16, float16 or float32.")
    cuda = device == "cuda"
    if dtype == "float32":
        return Precision(param=4, compute=4, residual=4, autocast=False, cast_weights=False, gathered=4, gradient=4, optimizer=8, cuda=cuda)
    if parallel.backend == "deepspeed" and parallel.mixed_precision:
        # DeepSpeed's bf16 mode: the model in 16 bits (the trainer's autocast has no weight left
        # to cast), fp32 master weights and moments in the optimizer (Rajbhandari et al. 2020:
        # 2 + 2 + 12 bytes per parameter).
        return Precision(param=2, compute=2, residual=2, autocast=True, cast_weights=False, gathered=2, gradient=2, optimizer=12, cuda=cuda)
    # fp32 parameters under autocast. FSDP2 with mixed precision gathers them in 16 bits, so the
    # forward pass sees 16-bit weights: nothing left to cast, and the embeddings (the residual
    # stream) come out in 16 bits.
    gathered_half = parallel.backend == "torch" and parallel.mixed_precision and fsdp > 1
    return Precision(
        param=4,
        compute=2,
        residual=2 if gathered_half else 4,
        autocast=True,
        cast_weights=not gathered_half,
        gathered=2 if gathered_half else 4,
        gradient=4,
        optimizer=8,
        cuda=cuda,
    )


# ---- activations -------------------------------------------------------------------------------


def _layernorm_dtype(p: Precision, input_bytes: int) -> int:
    """Bytes per element LayerNorm runs (and outputs) in for an input of `input_bytes`."""
    return 4 if p.autocast and p.cuda else input_bytes


def _norm_saved(model: GPTConfig, p: Precision, input_bytes: int, width: int, rows: int, consumers: int) -> float:
    """Bytes per token a norm over `width` channels saves, applied `rows` times per token (the
    heads, for QK-norm) to an input of `input_bytes` per element, plus the inputs of the
    `consumers` linears it feeds. What it keeps of its input is counted here, even when that is
    the residual stream itself."""
    if model.norm == "layernorm":
        runs_in = _layernorm_dtype(p, input_bytes)
        stats = 4 if p.cuda else runs_in
        saved = runs_in * width + 2 * stats * rows  # the input (or its fp32 cast); mean and 1/std
        out = runs_in
    else:
        # Our RMSNorm: x.float(), then F.rms_norm, which keeps its fp32 input, 1/rms and the
        # normalized x (for the weight's gradient), then back to the input's dtype. (On CUDA a
        # fused kernel may keep less; this is what the CPU measures.)
        saved = 4 * width + 4 * rows + 4 * width
        out = input_bytes
    # A linear keeps its input; under autocast each linear casts it to `compute` itself.
    saved += (consumers if out != p.compute else min(consumers, 1)) * p.compute * width
    return saved


def _block_saved_per_token(model: GPTConfig, p: Precision, tp: int) -> float:
    """Bytes per token one block saves for its backward pass, op by op through `Block.forward`.
    Under TP each rank has 1/tp of the heads and MLP channels; the residual stream, the norms
    and the linears' inputs are whole on every rank."""
    C, F = model.n_embd, model.mlp_hidden // tp
    heads, kv_heads = model.n_head // tp, model.n_kv_head // tp
    q, kv = heads * model.head_dim, kv_heads * model.head_dim
    saved = _norm_saved(model, p, p.residual, C, 1, consumers=3)  # ln_1 → c_q, c_k, c_v
    if model.qk_norm:  # on the linears' outputs, per head
        saved += _norm_saved(model, p, p.compute, q, heads, 0) + _norm_saved(model, p, p.compute, kv, kv_heads, 0)
    # SDPA keeps q, k and v (k and v after repeating grouped heads), its output and the fp32
    # log-sum-exp per head. Its output has q's memory layout: (B, T, H, hd) as the linear made
    # it, and c_proj's input is a view of it; a q that rotary positions or QK-norm rewrote is
    # (B, H, T, hd), and c_proj keeps a copy.
    saved += 4 * p.compute * q + 4 * heads
    if model.position == "rope" or model.qk_norm:
        saved += p.compute * q
    saved += _norm_saved(model, p, p.residual, C, 1, consumers=2 if model.mlp == "swiglu" else 1)  # ln_2
    # GELU keeps its input and c_proj its output; SwiGLU: gate, silu(gate), up and their product.
    saved += (4 if model.mlp == "swiglu" else 2) * p.compute * F
    if model.dropout > 0:
        saved += 2 * C  # two residual dropouts' masks, 1 byte each on CUDA (flash keeps an RNG state)
    return saved


def _block_saved_fixed(model: GPTConfig, p: Precision) -> float:
    """Bytes one block saves independent of the batch: rotary tables cast to the dtype of q and k
    (cos and sin, for q and for k); fp32 ones are views of the model's buffers."""
    if model.position != "rope":
        return 0.0
    rotated = _layernorm_dtype(p, p.compute) if model.qk_norm and model.norm == "layernorm" else p.compute
    return 0.0 if rotated == 4 else 4 * model.block_size * model.head_dim // 2 * rotated


def _head_input_bytes(model: GPTConfig, p: Precision) -> int:
    """Bytes per element of the final norm's output, the hidden state the loss reads."""
    return _layernorm_dtype(p, p.residual) if model.norm == "layernorm" else p.residual


# ---- the chunked head and loss -----------------------------------------------------------------


def loss_working_set(tokens: int, vocab: int, width: int, matmul: int, hidden: int) -> float:
    """Peak bytes of the chunk loop in `_LinearCrossEntropy.forward` (model/loss.py), above what
    it keeps, for `tokens` rows of `width` hidden channels (`hidden` bytes each) and a head of
    `vocab` rows, multiplied in `matmul` bytes. Per chunk of n rows: logits (n, V) in the matmul
    dtype, their fp32 softmax (a 16-bit input is copied to fp32 first), the logits' gradient in
    the matmul dtype (in fp32 it is the softmax itself), and a few (n, C) rows. The loop rebinds
    its variables one by one, so the next chunk's logits and softmax are made while the previous
    chunk's softmax, gradient and scaled rows still exist; the peak is the largest of the live
    sets at each statement that allocates."""
    rows = max(1, CHUNK_ELEMENTS // vocab)
    n = min(tokens, rows)
    elements = n * vocab
    half = matmul != 4
    logits = elements * matmul
    probs = elements * 4
    to_fp32 = elements * 4 if half else 0  # softmax(..., dtype=float32) of a 16-bit input
    grad_logits = elements * matmul if half else 0  # probs.to(fp32) is probs itself
    rows_copy = n * width * matmul if hidden != matmul else 0  # h_chunk; else a view of h
    scaled_rows = n * width * matmul
    # What the previous chunk left bound when this one starts (its logits are rebound first).
    earlier = tokens > n
    previous_scaled = scaled_rows if earlier else 0
    previous_probs = probs + grad_logits if earlier else 0
    current = logits + probs + grad_logits
    points = [
        previous_probs + previous_scaled + logits + to_fp32 + probs,  # the softmax
        (grad_logits if earlier else 0) + previous_scaled + current,  # grad_logits = probs.to(...)
        previous_scaled + current + 2 * n * width * matmul,  # grad_h rows: a matmul, then scaled
        previous_scaled + current + n * width * 4 + (scaled_rows if half else 0),  # scaled_h, via fp32
    ]
    if half:
        points.append(current + scaled_rows + vocab * width * matmul)  # grad_w += a (V, C) product
    return rows_copy + max(points)


# ---- memory ------------------------------------------------------------------------------------


@dataclass
class Memory:
    """Bytes per device at the step's peak, by what holds them."""

    weights: float
    """Parameters as stored (a shard under FSDP / ZeRO-3; 1/tp of the blocks under TP)."""
    gradients: float
    """Gradients as kept between micro-batches (sharded under FSDP / ZeRO-2 and -3), plus DDP's
    gradient buckets, a second copy of them."""
    optimizer: float
    """AdamW's moments (and fp32 master weights under DeepSpeed's 16-bit mode), sharded under
    FSDP and ZeRO."""
    weight_copies: float
    """Weights alive beside the stored ones: autocast's 16-bit casts, FSDP / ZeRO-3's gathered
    parameters (the embeddings the whole step, one or two blocks at a time)."""
    activations: float
    """What the forward pass saves for the backward pass, at the peak (one micro-batch)."""
    temporaries: float
    """The working set at the peak: the chunked head and loss, or the backward pass's gradients."""
    peak_at: str
    """Where the peak is: the head and loss at the end of the forward pass, the loss's gradients
    at the start of the backward pass, or the last block's backward."""
    host: float = 0.0
    """Bytes per process moved to host memory by parallel.cpu_offload."""

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.weight_copies + self.activations + self.temporaries


@dataclass(frozen=True)
class Layout:
    """How the run's processes are arranged (ParallelConfig.layout resolved for a GPU count)."""

    dp: int
    """Data-parallel replicas (DDP; over FSDP groups, HSDP); under DeepSpeed, all processes."""
    fsdp: int
    """Processes each FSDP group shards over."""
    tp: int
    """Tensor-parallel processes."""
    backend: str
    """torch or deepspeed."""
    zero_stage: int
    """DeepSpeed's ZeRO stage (1, 2 or 3)."""

    @property
    def devices(self) -> int:
        return self.dp * self.fsdp * self.tp

    @property
    def describe(self) -> str:
        if self.backend == "deepspeed":
            return f"DeepSpeed ZeRO-{self.zero_stage} over {self.devices}"
        return f"dp {self.dp} × fsdp {self.fsdp} × tp {self.tp}"


def _state(params: Params, p: Precision, layout: Layout, offload: bool) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer, host) bytes per device for the state that lives all step."""
    local = params.local_total(layout.tp)
    weights, gradients, optimizer = local * p.param, local * p.gradient, local * p.optimizer
    if layout.backend == "deepspeed":
        n = layout.devices
        optimizer /= n
        gradients /= n if layout.zero_stage >= 2 else 1
        weights /= n if layout.zero_stage == 3 else 1
    elif layout.fsdp > 1:
        weights, gradients, optimizer = weights / layout.fsdp, gradients / layout.fsdp, optimizer / layout.fsdp
        if offload:
            return 0.0, 0.0, 0.0, weights + gradients + optimizer
    elif layout.dp > 1:
        gradients *= 2  # DDP all-reduces through buckets that copy every gradient
    return weights, gradients, optimizer, 0.0


@dataclass(frozen=True)
class Gathered:
    """Bytes of parameters FSDP / ZeRO-3 holds gathered on a device."""

    root: float
    """The root module's (embeddings, final norm, head): gathered for the whole step."""
    block: float
    """One block's. An all-gather's buffer lives until the next all-gather or the end of the
    root's forward: one block is gathered while the loss runs and when the backward pass starts,
    two in a block's backward (it and the one prefetched)."""
    all_blocks: bool
    """parallel.reshard_after_forward is off: every block stays gathered from its forward to
    its backward."""

    def during(self, blocks: int, n_layer: int) -> float:
        """Bytes gathered while `blocks` blocks are (every block, without resharding)."""
        return self.root + (n_layer if self.all_blocks else blocks) * self.block


def gathered(params: Params, p: Precision, layout: Layout, reshard: bool) -> Gathered:
    """What FSDP, or ZeRO-3 (modeled the same way, not measured), gathers; nothing otherwise."""
    sharded = layout.fsdp > 1 or (layout.backend == "deepspeed" and layout.zero_stage == 3)
    if not sharded:
        return Gathered(0.0, 0.0, False)
    return Gathered(params.root * p.gathered, params.local_block(layout.tp) * p.gathered, not reshard)


@dataclass(frozen=True)
class Phases:
    """Bytes per device above the step-long state at three points of a micro-batch (the figures
    `bench/plan_memory.py` measures)."""

    end_of_forward: float
    """Once the loss is computed (inside autocast): saved activations, weight copies, the loss's
    saved gradients."""
    forward_peak: float
    """The high point of the forward pass: the chunked head and loss (and, under FSDP, the last
    block's all-gather buffer)."""
    backward_peak: float
    """The high point of the backward pass: the loss's gradients arriving, or the last block's
    backward (with its recomputation under activation checkpointing)."""


def estimate_memory(config: RunConfig, layout: Layout, device: str = "cuda") -> tuple[Memory, Phases]:
    """Memory per device for `config` on `layout`, at the peak and at each phase. `device` is
    cuda (what plans are for) or cpu (how `bench/plan_memory.py` checks the model)."""
    model, train = config.model, config.train
    params = count_params(model)
    p = precision(train.dtype, config.parallel, layout.fsdp, device)
    offload = config.parallel.cpu_offload and layout.backend == "torch" and layout.fsdp > 1
    weights, gradients, optimizer, host = _state(params, p, layout, offload)
    gather = gathered(params, p, layout, config.parallel.reshard_after_forward)

    tokens = train.micro_batch_size * model.block_size  # per micro-batch, on every rank (TP ranks share it)
    C, V, L = model.n_embd, model.vocab_size, model.n_layer
    block = tokens * _block_saved_per_token(model, p, layout.tp) + _block_saved_fixed(model, p)
    block_input = tokens * C * p.residual
    checkpointing = train.activation_checkpointing
    blocks_saved = L * (block_input if checkpointing else block)
    final_norm = tokens * _norm_saved(model, p, p.residual, C, 1, consumers=0)
    hidden = _head_input_bytes(model, p)
    loss_saved = tokens * C * hidden + V * C * 4  # the loss's gradients for h and for the head (fp32)
    # Outside the blocks: token ids and targets (int64), the embedding dropout's mask.
    activations = blocks_saved + tokens * (16 + (C if model.dropout > 0 else 0)) + final_norm + loss_saved

    # Autocast's 16-bit casts of the blocks' weights: cached through the forward pass, and the
    # backward pass keeps those the blocks still need (one block's under checkpointing). The
    # head is cast twice: once by autocast (cached), once by the loss for its chunks.
    block_casts = params.block_linear // layout.tp * 2 if p.cast_weights else 0  # TP splits almost all of them
    head_cast = V * C * p.compute if p.cast_weights else 0
    casts_backward = block_casts if checkpointing else L * block_casts

    # The head and loss: the hidden state, the head cast for the chunks, the chunk loop.
    head_loss = tokens * C * hidden + head_cast + loss_working_set(tokens, V, C, p.compute, hidden)
    # Backward, first the loss's gradients, made while the ones it saved still exist (the head's
    # in fp32, then cast to a 16-bit weight's dtype).
    loss_backward = tokens * C * hidden + V * C * (4 + (p.gathered if p.gathered != 4 else 0))
    # Then the last block (recomputed first under checkpointing), once the loss and the final
    # norm have freed what they saved: the gradient arriving from above and the MLP's: for GELU,
    # at c_proj's backward, the hidden gradient and c_proj's weight gradient (computed in
    # `compute`, accumulated in fp32); for SwiGLU, at the product's backward (c_proj's input
    # freed, its weight gradient accumulated), the gradients of both factors. The head's gradient
    # waits, unsharded, for the embedding's backward when tied, and for the end of the backward
    # pass under FSDP. (The forward pass of a checkpointed block holds its intermediates only
    # until it returns, less than its recomputation holds here.)
    F = model.mlp_hidden // layout.tp
    if model.mlp == "swiglu":
        mlp_backward = 2 * tokens * F * p.compute
    else:
        mlp_backward = tokens * F * p.compute + F * C * (p.gradient + (p.compute if p.compute != p.gradient else 0))
    block_backward = tokens * C * p.residual + mlp_backward
    if checkpointing:
        block_backward += block - block_input
    head_gradient = V * C * p.gathered if model.tie_embeddings or gather.root else 0

    state = (weights, gradients, optimizer)
    forward_casts = L * block_casts + head_cast
    # The last block's all-gather buffer lives until the root's forward returns, after the loss.
    at_loss = Memory(*state, forward_casts + gather.during(0, L) + gather.block, activations, head_loss, "head and loss", host)
    from_loss = Memory(*state, casts_backward + gather.during(1, L), activations, loss_backward, "loss's gradients", host)
    in_block = Memory(*state, casts_backward + gather.during(2, L), activations - loss_saved - final_norm, head_gradient + block_backward, "last block's backward", host)
    held = weights + gradients + optimizer
    phases = Phases(
        end_of_forward=forward_casts + gather.during(0, L) + activations,
        forward_peak=at_loss.total - held,
        backward_peak=max(from_loss.total, in_block.total) - held,
    )
    return max((at_loss, from_loss, in_block), key=lambda memory: memory.total), phases


# ---- the plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a run needs, for one layout on one kind of GPU."""

    gpu: GPU
    """The kind of GPU planned for."""
    layout: Layout
    """The config's parallel settings resolved for the GPU count."""
    dtype: str
    """The compute precision planned with (auto is bf16 on these GPUs)."""
    params: Params
    """Parameter counts."""
    flops_per_token: float
    """Training FLOPs per token (`GPT.flops_per_token`)."""
    flops_per_step: float
    """flops_per_token × train.batch_tokens."""
    memory: Memory
    """Per device, at the step's peak."""
    grad_accum: float
    """Micro-batches per optimizer step on each data-parallel rank."""
    fits: bool
    """The peak fits in the GPU's memory (with nothing left for what is not counted)."""
    devices_needed: int | None
    """The fewest GPUs of this kind the run fits on, sharding with FSDP (ZeRO under DeepSpeed) and
    keeping tp; None when no count fits (what sharding leaves whole, such as the activations, is
    too large)."""
    mfu: float
    """Model FLOPs utilization assumed for the time."""
    step_time_s: float
    """Seconds per optimizer step at `mfu` of the GPUs' peak (bf16, or TF32 for fp32)."""
    total_time_s: float
    """train.max_steps steps."""
    optimal_tokens: float
    """Compute-optimal training tokens: 20 per parameter."""
    optimal_steps: int
    """Optimizer steps for optimal_tokens at train.batch_tokens."""
    notes: list[str] = field(default_factory=list)


MAX_DEVICES = 1 << 16
"""The most GPUs the search for a count that fits tries."""


def _layout(parallel: ParallelConfig, gpus: int) -> Layout:
    """The layout of `parallel` on `gpus` GPUs; one sentence in the planner's words when the
    sizes do not fit (ParallelConfig.layout speaks of launched processes)."""
    if parallel.backend == "torch":
        inner = parallel.fsdp * parallel.tp
        if parallel.dp and parallel.dp * inner != gpus:
            raise UserError(f"parallel.dp × fsdp × tp = {parallel.dp} × {parallel.fsdp} × {parallel.tp} = {parallel.dp * inner}, not --gpus {gpus}; plan {parallel.dp * inner} GPUs, or set parallel.dp = 0 to use what is left over.")
        if gpus % inner:
            raise UserError(f"--gpus {gpus} is not a multiple of parallel.fsdp × parallel.tp = {inner}; plan a multiple of {inner} GPUs or change the sizes.")
    dp, fsdp, tp = parallel.layout(gpus)
    return Layout(dp, fsdp, tp, parallel.backend, parallel.zero_stage)


def _sharded_over(layout: Layout, devices: int) -> Layout:
    """`layout` moved to `devices` GPUs with all data parallelism turned into sharding."""
    if layout.backend == "deepspeed":
        return replace(layout, dp=devices)
    return replace(layout, dp=1, fsdp=devices // layout.tp)


def devices_needed(config: RunConfig, layout: Layout, capacity: float) -> int | None:
    """The fewest GPUs (a multiple of tp) on which the run's peak fits in `capacity` bytes."""

    def fits(devices: int) -> bool:
        return estimate_memory(config, _sharded_over(layout, devices))[0].total <= capacity

    if fits(layout.tp):
        return layout.tp
    if not fits(layout.tp * MAX_DEVICES):
        return None
    # From 2 on, memory falls as the shard count grows (at 1 nothing is sharded or gathered):
    # bisect on it.
    low, high = 2, MAX_DEVICES
    while low < high:
        middle = (low + high) // 2
        if fits(layout.tp * middle):
            high = middle
        else:
            low = middle + 1
    return layout.tp * low


def _check_layout(config: RunConfig, layout: Layout) -> None:
    """Refuse what training refuses (train/distributed.py, train/deepspeed_backend.py)."""
    check_tensor_parallel(config.model, layout.tp)
    if layout.backend == "deepspeed" and config.train.dtype == "float16":
        raise UserError("parallel.backend = \"deepspeed\" runs float32 or bfloat16 here; set train.dtype = \"bfloat16\" (or \"float32\").")


def default_gpus(parallel: ParallelConfig) -> int:
    """The GPU count a config names: dp × fsdp × tp when dp is set, else fsdp × tp (one replica)."""
    if parallel.backend == "deepspeed":
        return max(1, parallel.dp)
    return (parallel.dp or 1) * parallel.fsdp * parallel.tp


def plan(config: RunConfig, gpus: int, gpu: str = "h100", mfu: float = 0.4) -> Plan:
    """Plan `config` on `gpus` GPUs of kind `gpu` (a key of `GPUS`) at model FLOPs utilization
    `mfu`, with the layout of its [parallel] settings. Bad input is a UserError."""
    if gpus < 1:
        raise UserError(f"--gpus is {gpus}; it must be at least 1.")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu is {mfu}; it must be a fraction in (0, 1], e.g. 0.4.")
    device = find_gpu(gpu)
    notes = []
    if config.model.vocab_size == 0:
        config = replace(config, model=replace(config.model, vocab_size=ASSUMED_VOCAB))
        notes.append(f"model.vocab_size is 0 (the tokenizer's size at training time); planned with {ASSUMED_VOCAB:,} (GPT-2's, padded). Set it with --set model.vocab_size=N.")
    model, train = config.model, config.train
    layout = _layout(config.parallel, gpus)
    _check_layout(config, layout)
    if config.parallel.cpu_offload and not (layout.backend == "torch" and layout.fsdp > 1):
        notes.append("parallel.cpu_offload applies to FSDP (parallel.fsdp > 1); not planned here.")
    if train.fp8:
        notes.append("train.fp8 is planned as bf16: its float8 casts are not counted, and the step time uses the bf16 peak.")
    p = precision(train.dtype, config.parallel, layout.fsdp)

    params = count_params(model)
    per_token = flops_per_token(model, params)
    per_step = per_token * train.batch_tokens
    memory, _ = estimate_memory(config, layout)
    replicas = layout.dp * layout.fsdp
    grad_accum = train.batch_tokens / (train.micro_batch_size * model.block_size * replicas)
    if not grad_accum.is_integer() or grad_accum < 1:
        notes.append(f"train.batch_tokens ({train.batch_tokens:,}) is not a whole number of micro-batches of {train.micro_batch_size} × {model.block_size} tokens on each of {replicas} data-parallel rank(s).")
    bf16_peak, tf32_peak = device.peaks
    peak = tf32_peak if p.compute == 4 else bf16_peak
    step_time = per_step / (gpus * peak * mfu)
    optimal_tokens = TOKENS_PER_PARAMETER * params.total
    return Plan(
        gpu=device,
        layout=layout,
        dtype="float32" if p.compute == 4 else ("float16" if train.dtype == "float16" else "bfloat16"),
        params=params,
        flops_per_token=per_token,
        flops_per_step=per_step,
        memory=memory,
        grad_accum=grad_accum,
        fits=memory.total <= device.memory,
        devices_needed=devices_needed(config, layout, device.memory),
        mfu=mfu,
        step_time_s=step_time,
        total_time_s=step_time * train.max_steps,
        optimal_tokens=optimal_tokens,
        optimal_steps=math.ceil(optimal_tokens / train.batch_tokens),
        notes=notes,
    )


# ---- the table `scratchlm plan` prints ---------------------------------------------------------


def _count(n: float) -> str:
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g} {suffix}"
    return f"{n:.3g}"


def _flops(n: float) -> str:
    for size, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if n >= size:
            return f"{n / size:.3g} {prefix}FLOP"
    return f"{n:.3g} FLOP"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _duration(seconds: float) -> str:
    for size, unit in ((86_400, "days"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _copies_note(result: Plan, config: RunConfig) -> str:
    layout, copies = result.layout, []
    if precision(config.train.dtype, config.parallel, layout.fsdp).cast_weights:
        copies.append("autocast's 16-bit casts")
    if layout.fsdp > 1 or (layout.backend == "deepspeed" and layout.zero_stage == 3):
        copies.append("gathered parameters")
    return " and ".join(copies)


def render(result: Plan, config: RunConfig, name: str) -> Table:
    """The plan as a rich table: model, memory per GPU, GPUs needed, time, compute-optimal length."""
    from rich.table import Table

    train, memory, layout = config.train, result.memory, result.layout
    table = Table(
        title=f"plan: {name} on {layout.devices} × {result.gpu.name}",
        caption="Memory leaves out the CUDA context, NCCL buffers and allocator fragmentation.",
        show_header=False,
        title_justify="left",
        caption_justify="left",
    )
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    table.add_row("parameters", _count(result.params.total), f"{_count(result.params.non_embedding)} non-embedding")
    table.add_row("FLOPs per token", _flops(result.flops_per_token), "6 per non-embedding parameter + attention")
    table.add_row("FLOPs per step", _flops(result.flops_per_step), f"{train.batch_tokens:,} tokens")
    table.add_section()
    checkpointing = ", activation checkpointing" if train.activation_checkpointing else ""
    table.add_row("layout", layout.describe, f"{result.dtype}{checkpointing}")
    table.add_row("micro-batch", f"{train.micro_batch_size} × {config.model.block_size:,}", f"{result.grad_accum:g} per step on each data-parallel rank")
    rows = [
        ("weights", memory.weights, "a shard" if gathered(result.params, precision(config.train.dtype, config.parallel, layout.fsdp), layout, True).root else ""),
        ("gradients", memory.gradients, "with DDP's buckets" if layout.backend == "torch" and layout.fsdp == 1 and layout.dp > 1 else ""),
        ("optimizer states", memory.optimizer, "AdamW moments" + (" and fp32 weights" if precision(config.train.dtype, config.parallel, layout.fsdp).optimizer > 8 else "")),
        ("weight copies", memory.weight_copies, _copies_note(result, config)),
        ("activations", memory.activations, "saved for the backward pass"),
        ("temporaries", memory.temporaries, f"at the peak: {memory.peak_at}"),
    ]
    for label, value, note in rows:
        table.add_row(f"  {label}", _gib(value), note)
    table.add_row("memory per GPU", _gib(memory.total), f"{'fits' if result.fits else 'does not fit'} in {_gib(result.gpu.memory)}")
    if memory.host:
        table.add_row("host memory per process", _gib(memory.host), "parallel.cpu_offload")
    if result.devices_needed == layout.tp:
        table.add_row("GPUs needed", str(result.devices_needed), "no sharding needed" + (f" (tp {layout.tp})" if layout.tp > 1 else ""))
    elif result.devices_needed:
        how = f"sharding with {'ZeRO' if layout.backend == 'deepspeed' else 'FSDP'}" + (f", tp {layout.tp}" if layout.tp > 1 else "")
        table.add_row("GPUs needed", str(result.devices_needed), how)
    else:
        table.add_row("GPUs needed", "none", "what sharding leaves whole does not fit: lower micro_batch_size or checkpoint activations")
    table.add_section()
    peak = result.gpu.peaks[1 if result.dtype == "float32" else 0]
    table.add_row(f"step time at MFU {result.mfu:.0%}", _duration(result.step_time_s), f"peak {_flops(peak)}/s per GPU")
    table.add_row(f"{train.max_steps:,} steps", _duration(result.total_time_s), f"{_count(train.max_steps * train.batch_tokens)} tokens")
    table.add_row("compute-optimal", f"{_count(result.optimal_tokens)} tokens", f"{TOKENS_PER_PARAMETER} per parameter: {result.optimal_steps:,} steps")
    for note in result.notes:
        table.add_row("note", "", note)
    return table
