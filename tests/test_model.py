"""The GPT model against independent references: a naive attention and a naive forward pass
written here from the formulas, closed-form parameter and FLOP counts, and training behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.errors import UserError
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.model.kv_cache import KVCache

torch.set_num_threads(1)

MODERN = dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, qk_norm=True, tie_embeddings=False, bias=False)


def tiny(**overrides: object) -> GPTConfig:
    settings: dict[str, object] = dict(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
    settings.update(overrides)
    return GPTConfig(**settings)  # type: ignore[arg-type]


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (norm gains and biases too) non-trivial values, so that each one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # norm gains: around 1
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))


# ---- naive references -----------------------------------------------------------------------


def naive_layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight
    return y + bias if bias is not None else y


def naive_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def naive_norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, torch.nn.LayerNorm):
        return naive_layernorm(x, module.weight, module.bias, module.eps)
    return naive_rmsnorm(x, module.weight, module.eps)


def naive_rope(x: torch.Tensor, base: float, start: int = 0) -> torch.Tensor:
    """Rotate channel pairs (j, j + d/2) as complex numbers by e^{i·pos·θ_j}, θ_j = base^(-2j/d)."""
    T, d = x.size(-2), x.size(-1)
    half = d // 2
    theta = base ** (-2 * torch.arange(half, dtype=torch.float64) / d)
    pos = torch.arange(start, start + T, dtype=torch.float64)
    rotation = torch.polar(torch.ones(T, half, dtype=torch.float64), pos[:, None] * theta[None, :])  # (T, half)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * rotation
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def naive_gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def naive_attention(attn: torch.nn.Module, x: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """q@kᵀ/√d, causal -inf mask, softmax, @v, with per-head loops over repeated kv heads."""
    B, T, C = x.shape
    H, KV, d = config.n_head, config.n_kv_head, config.n_embd // config.n_head


    def project(linear: torch.nn.Linear) -> torch.Tensor:
        out = x @ linear.weight.T
        return out + linear.bias if linear.bias is not None else out

    q = project(attn.c_q).reshape(B, T, H, d)
    k = project(attn.c_k).reshape(B, T, KV, d)
    v = project(attn.c_v).reshape(B, T, KV, d)
    if config.qk_norm:
        q, k = naive_norm(attn.q_norm, q), naive_norm(attn.k_norm, k)
    heads = []
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for h in range(H):
        g = h // (H // KV)  # the kv head this query head reads
        qh, kh, vh = q[:, :, h], k[:, :, g], v[:, :, g]  # (B, T, d)
        if config.position == "rope":
            qh, kh = naive_rope(qh, config.rope_theta), naive_rope(kh, config.rope_theta)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(d)
        scores = scores.masked_fill(mask, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ vh)
    y = torch.cat(heads, dim=-1)  # (B, T, C): head h in channels h·d..(h+1)·d
    y = y @ attn.c_proj.weight.T
    return y + attn.c_proj.bias if attn.c_proj.bias is not None else y


def naive_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    c = model.config
    p = dict(model.named_parameters())
    x = p["transformer.wte.weight"][idx]
    if c.position == "learned":
        x = x + p["transformer.wpe.weight"][: idx.size(1)]
    for block in model.transformer.h:
        x = x + naive_attention(block.attn, naive_norm(block.ln_1, x), c)
        normed = naive_norm(block.ln_2, x)
        h = normed @ block.mlp.c_fc.weight.T
        if block.mlp.c_fc.bias is not None:
            h = h + block.mlp.c_fc.bias
        if c.mlp == "swiglu":
            gate = normed @ block.mlp.c_gate.weight.T
            h = gate * torch.sigmoid(gate) * h
        else:
            h = naive_gelu(h)
        h = h @ block.mlp.c_proj.weight.T
        x = x + (h + block.mlp.c_proj.bias if block.mlp.c_proj.bias is not None else h)
    x = naive_norm(model.transformer.ln_f, x)
    head = p["transformer.wte.weight"] if c.tie_embeddings else p["lm_head.weight"]
    return x @ head.T


# ---- attention ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_kv_head": 2},
        {"n_kv_head": 1},
        {"qk_norm": True},
        {"qk_norm": True, "norm": "rmsnorm"},
        {"position": "rope"},
        {"position": "rope", "rope_theta": 500.0, "n_kv_head": 2, "qk_norm": True, "bias": False},
    ],
    ids=["plain", "gqa2", "mqa", "qk_norm", "qk_rmsnorm", "rope", "rope_gqa_qknorm"],
)
def test_attention_matches_naive(overrides: dict) -> None:
    torch.manual_seed(0)
    config = tiny(**overrides)
    model = GPT(config).eval()
    randomize(model)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 11, config.n_embd)
    rope = None
    if config.position == "rope":
        rope = (model.rope_cos[:11], model.rope_sin[:11])
    with torch.no_grad():
        got = attn(x, rope, None, 0)
        want = naive_attention(attn, x, config)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_rope_tables_cover_the_whole_context() -> None:
    # The reference rotation at the last positions of the context, not only the first few.
    config = tiny(position="rope", block_size=32)
    model = GPT(config)
    x = torch.randn(1, 1, 32, config.head_dim)
    from scratchlm.model.attention import apply_rope

    torch.testing.assert_close(apply_rope(x, model.rope_cos, model.rope_sin), naive_rope(x, config.rope_theta), atol=1e-5, rtol=1e-4)


# ---- the whole model ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, MODERN], ids=["gpt2", "modern"])
def test_model_matches_naive_forward(overrides: dict) -> None:
    torch.manual_seed(0)
    model = GPT(tiny(**overrides)).eval()
    randomize(model)
    idx = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        logits, loss = model(idx)
        want = naive_forward(model, idx)
    assert loss is None
    assert logits.shape == (3, 16, 64)
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


def test_loss_is_mean_cross_entropy_ignoring_minus_100() -> None:
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    randomize(model)
    idx = torch.randint(0, 64, (2, 8))
    targets = torch.randint(0, 64, (2, 8))
    targets[0, :3] = -100
    with torch.no_grad():
        logits, loss = model(idx, targets)
    assert logits is None  # the head and loss run in chunks, never all logits at once
    logp = torch.log_softmax(naive_forward(model, idx).double(), dim=-1)
    keep = targets != -100
    want = -logp[keep].gather(1, targets[keep][:, None]).mean()
    assert loss is not None
    assert abs(loss.item() - want.item()) < 1e-4


def test_tied_and_untied_heads() -> None:
    tied = GPT(tiny())
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert "lm_head.weight" in dict(untied.named_parameters())


# ---- parameter count and names --------------------------------------------------------------


def gpt2_params(V: int, T: int, L: int, C: int) -> int:
    per_layer = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)
    return V * C + T * C + L * per_layer + 2 * C


def test_gpt2_124m_parameter_count_and_hf_names() -> None:
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    with torch.device("meta"):
        model = GPT(config)
    assert gpt2_params(50257, 1024, 12, 768) == 124_439_808
    assert model.num_params() == 124_439_808
    assert sum(p.numel() for p in model.parameters()) == 124_439_808

    names = {name: tuple(p.shape) for name, p in model.named_parameters()}
    C = 768
    expected = {
        "transformer.wte.weight": (50257, C),
        "transformer.wpe.weight": (1024, C),
        "transformer.ln_f.weight": (C,),
        "transformer.ln_f.bias": (C,),
    }
    for i in range(12):
        h = f"transformer.h.{i}."
        expected |= {
            h + "ln_1.weight": (C,),
            h + "ln_1.bias": (C,),
            h + "attn.c_q.weight": (C, C),
            h + "attn.c_q.bias": (C,),
            h + "attn.c_k.weight": (C, C),
            h + "attn.c_k.bias": (C,),
            h + "attn.c_v.weight": (C, C),
            h + "attn.c_v.bias": (C,),
            h + "attn.c_proj.weight": (C, C),
            h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,),
            h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (4 * C, C),
            h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (C, 4 * C),
            h + "mlp.c_proj.bias": (C,),
        }
    assert names == expected
    # The head is tied: in the state dict under HF's name, the very same tensor as wte.
    state = model.state_dict()
    assert set(state) == set(expected) | {"lm_head.weight"}
    assert model.lm_head.weight is model.transformer.wte.weight


def test_hf_gpt2_table_gives_transformers_names_shapes_and_logits() -> None:
    """Our tensors through the conversion table load into transformers' GPT2LMHeadModel
    (strictly) and give the same logits; and the table inverts exactly."""
    transformers = pytest.importorskip("transformers")
    from scratchlm.convert.hf import GPT2, from_hf_state, to_hf_state

    torch.manual_seed(0)
    config = tiny()
    ours = GPT(config).eval()
    randomize(ours)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)).eval()
    hf_state = to_hf_state(ours.state_dict(), config)
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all(name.endswith((".attn.bias", ".attn.masked_bias")) for name in missing)
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], atol=1e-4, rtol=1e-4)
    back = from_hf_state(hf.state_dict(), config, GPT2)
    assert set(back) == set(ours.state_dict())
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back[name], tensor), name


def test_parameter_count_without_bias_untied_gqa_swiglu() -> None:
    V, T, L, C, H, KV = 64, 16, 2, 32, 4, 2
    model = GPT(tiny(n_kv_head=KV, bias=False, tie_embeddings=False, mlp="swiglu", norm="rmsnorm"))
    d = C // H
    hidden = 64 * math.ceil(4 * C * 2 / 3 / 64)  # 2/3 of 4C rounded up to 64 = 128 for C=32
    per_layer = C + C * (H + 2 * KV) * d + C * C + C + C * 2 * hidden + hidden * C
    assert model.num_params() == V * C + T * C + L * per_layer + C + V * C


# ---- initialization -------------------------------------------------------------------------


def test_initialization_scales() -> None:
    torch.manual_seed(0)
    L = 6
    model = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=L, n_head=4, n_embd=256))
    residual = 0.02 / math.sqrt(2 * L)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - residual) < 0.05 * residual, name
            assert abs(p.mean().item()) < 0.05 * residual, name
        elif name.endswith(("c_q.weight", "c_k.weight", "c_v.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() - 0.02) < 0.05 * 0.02, name
            assert abs(p.mean().item()) < 0.002, name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.all(p == 1), name
        else:
            raise AssertionError(f"unexpected parameter {name}")


def test_untied_head_is_initialized_like_the_other_linears() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=256, tie_embeddings=False))
    assert abs(model.lm_head.weight.std().item() - 0.02) < 0.001


# ---- training behaviour ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, MODERN], ids=["gpt2", "modern"])
def test_overfits_one_batch(overrides: dict) -> None:
    torch.manual_seed(0)
    model = GPT(tiny(**overrides))
    data = torch.randint(0, 64, (4, 17))
    x, y = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    with torch.no_grad():
        _, first = model(x, y)
    assert abs(first.item() - math.log(64)) < 0.5  # a fresh model is close to uniform
    for _ in range(150):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, loss = model(x, y)
    assert loss.item() < 0.1


# ---- KV cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"position": "rope", "n_kv_head": 2}, MODERN], ids=["gpt2", "rope_gqa", "modern"])
def test_kv_cache_matches_full_forward(overrides: dict) -> None:
    torch.manual_seed(0)
    config = tiny(**overrides)
    model = GPT(config).eval()
    randomize(model)
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config.n_layer, 2, config.n_kv_head, 16, config.head_dim, "cpu", torch.float32)
        pieces = []
        # prefill 5, chunked prefill 4 and 3, then one token at a time to the end of the context
        bounds = [0, 5, 9, 12, 13, 14, 15, 16]
        for a, b in zip(bounds, bounds[1:]):
            logits, _ = model(idx[:, a:b], cache=cache)
            assert cache.length == b
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
    # Against the naive reference too, so a bug shared by both paths would still show.
    torch.testing.assert_close(full, naive_forward(model, idx).detach(), atol=1e-4, rtol=1e-4)


def test_kv_cache_beyond_context_is_user_error() -> None:
    config = tiny()
    model = GPT(config).eval()
    cache = KVCache(config.n_layer, 1, config.n_kv_head, 16, config.head_dim, "cpu", torch.float32)
    with torch.no_grad():
        model(torch.zeros(1, 15, dtype=torch.long), cache=cache)
        with pytest.raises(UserError):
            model(torch.zeros(1, 2, dtype=torch.long), cache=cache)


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"position": "rope"}], ids=["learned", "rope"])
def test_sequence_longer_than_context_is_user_error(overrides: dict) -> None:
    model = GPT(tiny(**overrides))
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly the context is fine
    with pytest.raises(UserError, match="context"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_embd": 30, "n_head": 4},  # not divisible
        {"n_head": 4, "n_kv_head": 3},  # not a multiple
        {"n_embd": 36, "n_head": 4, "position": "rope"},  # head size 9 is odd
        {"n_layer": 0},
        {"block_size": 0},
    ],
)
def test_config_validation_is_user_error(overrides: dict) -> None:
    with pytest.raises(UserError):
        tiny(**overrides)


def test_zero_vocab_is_user_error() -> None:
    with pytest.raises(UserError):
        GPT(tiny(vocab_size=0))


def test_odd_head_size_is_fine_without_rope() -> None:
    assert tiny(n_embd=36, n_head=4).head_dim == 9


# ---- FLOPs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_flops_per_token(tie: bool) -> None:
    V, T, L, C = 64, 16, 2, 32
    model = GPT(tiny(tie_embeddings=tie))
    # Matmul parameters: the blocks, the final norm and one V×C head; not the position table and,
    # untied, not the input lookup (a gather, no multiplication). Same number tied or untied.
    n_matmul = gpt2_params(V, T, L, C) - T * C
    assert n_matmul == L * (12 * C * C + 13 * C) + 2 * C + V * C
    assert model.flops_per_token() == 6 * n_matmul + 12 * L * C * T
    assert model.flops_per_token(8) == 6 * n_matmul + 12 * L * C * 8
