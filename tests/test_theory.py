"""Tests for initcore.theory: closed forms, initializer variances, quadrature, mean-field recursions.

Every pinned number says where it comes from. Monte-Carlo comparisons are seeded; their tolerances
are standard errors computed from the samples or spreads measured over many seeds (stated inline).
"""

import math

import numpy as np
import pytest

from initcore import theory as T

# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


def test_activation_names():
    # The brief fixes exactly these names.
    assert T.ACTIVATIONS == ("linear", "tanh", "sigmoid", "relu", "leaky_relu", "gelu", "silu", "selu")


def test_activation_values_by_hand():
    x = np.array([-2.0, -0.5, 0.0, 1.5])
    # leaky_relu: torch default negative_slope 0.01.
    np.testing.assert_allclose(T.activation_fn("leaky_relu")(x), [-0.02, -0.005, 0.0, 1.5])
    # gelu (exact erf form): GELU(1) = Φ(1) = 0.8413447460685429 (standard normal table).
    assert T.activation_fn("gelu")(1.0) == pytest.approx(0.8413447460685429, rel=1e-15)
    # selu(-inf) → -scale·alpha = -1.7580993408473766 (torch constants multiplied).
    assert T.activation_fn("selu")(-50.0) == pytest.approx(-1.7580993408473766, rel=1e-15)
    # sigmoid(0) = 1/2, silu(1) = 1/(1+e^-1) = 0.7310585786300049.
    assert T.activation_fn("sigmoid")(0.0) == 0.5
    assert T.activation_fn("silu")(1.0) == pytest.approx(0.7310585786300049, rel=1e-15)


@pytest.mark.parametrize("name", T.ACTIVATIONS)
def test_activations_match_torch(name):
    torch = pytest.importorskip("torch")
    fns = {
        "linear": lambda t: t,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "relu": torch.relu,
        "leaky_relu": torch.nn.functional.leaky_relu,
        "gelu": torch.nn.functional.gelu,
        "silu": torch.nn.functional.silu,
        "selu": torch.selu,
    }
    # Include exact 0, where relu-like gradients follow a convention (torch: relu'(0) = 0).
    x = torch.cat([torch.linspace(-8, 8, 1601, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x.requires_grad_(True)
    y = fns[name](x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    x_np = x.detach().numpy()
    # float64 on both sides: agreement to a few ulp.
    np.testing.assert_allclose(T.activation_fn(name)(x_np), y.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(T.activation_derivative(name)(x_np), grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", T.ACTIVATIONS)
def test_derivative_matches_finite_difference(name):
    x = np.array([-3.0, -1.2, -0.3, 0.4, 1.1, 2.5])  # away from the kink at 0
    eps = 1e-6
    phi = T.activation_fn(name)
    fd = (phi(x + eps) - phi(x - eps)) / (2 * eps)
    # Central difference error is O(eps²·φ''') + rounding O(1e-16/eps) ≈ 1e-10.
    np.testing.assert_allclose(T.activation_derivative(name)(x), fd, rtol=1e-8, atol=1e-9)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*linear, tanh.*selu"):
        T.activation_fn("swish")
    with pytest.raises(ValueError, match="valid: linear"):
        T.mlp_mean_field("Relu", 3, 2.0)


# ---------------------------------------------------------------------------------------------
# One layer (each strategy's Var(w) is its own declaration: tests/init/test_targets.py)
# ---------------------------------------------------------------------------------------------


def test_uniform_bound():
    # U(-a, a) has variance a²/3; xavier_uniform for 300→100: Var = 2/400, a = √(6/400) (torch's formula).
    assert T.uniform_bound(2 / 400) == pytest.approx(math.sqrt(6 / 400), rel=1e-14)
    with pytest.raises(ValueError):
        T.uniform_bound(-1.0)


def test_bad_fans():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="fan_in"):
            T.forward_ratio(bad, 0.1)
        with pytest.raises(ValueError, match="fan_out"):
            T.backward_ratio(bad, 0.1)


@pytest.mark.parametrize(
    "fan_in, fan_out, fwd, bwd",
    [
        # The reference notebook's shapes; fwd = 2·fan_in/(fan_in+fan_out), bwd = 2·fan_out/(...).
        (100, 100, 1.0, 1.0),
        (512, 128, 1.6, 0.4),  # 1024/640, 256/640
        (128, 512, 0.4, 1.6),
        (1024, 1024, 1.0, 1.0),
    ],
)
def test_xavier_ratios_for_notebook_shapes(fan_in, fan_out, fwd, bwd):
    var = 2 / (fan_in + fan_out)  # Xavier (Glorot & Bengio, 2010)
    assert T.forward_ratio(fan_in, var) == pytest.approx(fwd, rel=1e-14)
    assert T.backward_ratio(fan_out, var) == pytest.approx(bwd, rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Gaussian expectations
# ---------------------------------------------------------------------------------------------


def _relu_moments(b, q):
    """Closed forms for h ~ N(b, q), s = √q: E[relu h] = bΦ(b/s) + sφ(b/s),
    E[relu(h)²] = (b² + q)Φ(b/s) + b·s·φ(b/s)."""
    s = math.sqrt(q)
    cdf = 0.5 * math.erfc(-b / s / math.sqrt(2))
    pdf = math.exp(-0.5 * (b / s) ** 2) / math.sqrt(2 * math.pi)
    return b * cdf + s * pdf, (b * b + q) * cdf + b * s * pdf


@pytest.mark.parametrize("q", [1e-6, 0.3, 1.0, 7.0, 1e6])
def test_relu_closed_forms_at_zero_bias(q):
    relu = T.activation_fn("relu")
    # E[relu(h)²] = q/2 and E[relu(h)] = √(q/(2π)) for h ~ N(0, q) (half-normal moments).
    assert T.gaussian_expectation(lambda h: relu(h) ** 2, 0.0, q) == pytest.approx(q / 2, rel=1e-12)
    assert T.gaussian_expectation(relu, 0.0, q) == pytest.approx(math.sqrt(q / (2 * math.pi)), rel=1e-12)


@pytest.mark.parametrize("b, q", [(0.5, 1.0), (-1.3, 0.2), (3.0, 2.0), (-0.01, 1e-4)])
def test_relu_closed_forms_with_bias(b, q):
    relu = T.activation_fn("relu")
    mean, second = _relu_moments(b, q)
    assert T.gaussian_expectation(relu, b, q) == pytest.approx(mean, rel=1e-10)
    assert T.gaussian_expectation(lambda h: relu(h) ** 2, b, q) == pytest.approx(second, rel=1e-10)


@pytest.mark.parametrize("b, q", [(0.0, 1.0), (0.7, 3.0), (-2.0, 1e-3)])
def test_linear_and_polynomial_moments(b, q):
    # E[h] = b, E[h²] = b² + q, E[h⁴] = b⁴ + 6b²q + 3q² (Gaussian moments).
    assert T.gaussian_expectation(lambda h: h, b, q) == pytest.approx(b, abs=1e-13)
    assert T.gaussian_expectation(lambda h: h**2, b, q) == pytest.approx(b * b + q, rel=1e-13)
    assert T.gaussian_expectation(lambda h: h**4, b, q) == pytest.approx(b**4 + 6 * b * b * q + 3 * q * q, rel=1e-12)


def test_zero_variance_returns_f_of_mean():
    assert T.gaussian_expectation(np.tanh, 0.3, 0.0) == math.tanh(0.3)


def test_bad_variance():
    with pytest.raises(ValueError, match="var"):
        T.gaussian_expectation(np.tanh, 0.0, -1.0)


def test_tanh_saturation_closed_form_vs_integration():
    # Closed form: P(|tanh h| > 0.9) = P(|h| > atanh 0.9) = Φ((-t-b)/s) + Φ((b-t)/s).
    t = math.atanh(0.9)
    for b, q in [(0.0, 1.0), (0.4, 4.0), (-1.0, 0.25)]:
        s = math.sqrt(q)
        closed = float(T.normal_cdf((-t - b) / s) + T.normal_cdf((b - t) / s))
        integrated = T.gaussian_expectation(
            lambda h: (np.abs(np.tanh(h)) > 0.9).astype(float), b, q, breakpoints=(-t, t)
        )
        assert integrated == pytest.approx(closed, rel=1e-12)
        # Depth-2 MLP: layer 0 sees h ~ N(b, σw²·1), so σw² = q reproduces (b, q).
        predicted = T.mlp_mean_field("tanh", 2, q, bias=b)["saturated_frac"][0]
        assert predicted == pytest.approx(closed, rel=1e-12)


def test_sigmoid_saturation_counts_upper_end():
    # sigmoid(h) > 0.9 ⇔ h > ln 9; at h ~ N(0, 1): 1 - Φ(ln 9) = Φ(-2.1972245773362196).
    expected = float(T.normal_cdf(-math.log(9.0)))
    assert T.mlp_mean_field("sigmoid", 2, 1.0)["saturated_frac"][0] == pytest.approx(expected, rel=1e-12)
    assert 0.013 < expected < 0.015  # Φ(-2.197) ≈ 0.0140 (normal table)


@pytest.mark.parametrize("name", T.ACTIVATIONS)
def test_gaussian_expectation_vs_monte_carlo(name):
    # 10⁶ seeded samples of h ~ N(b, q); agreement within 5 standard errors of the sample mean.
    b, q, n = 0.2, 1.7, 10**6
    rng = np.random.default_rng(12345)
    h = b + math.sqrt(q) * rng.standard_normal(n)
    for f in (T.activation_fn(name), T.activation_derivative(name)):
        samples = f(h) ** 2
        se = samples.std(ddof=1) / math.sqrt(n)
        predicted = T.gaussian_expectation(lambda x, f=f: f(x) ** 2, b, q)
        assert abs(samples.mean() - predicted) < 5 * se + 1e-15


def test_preserving_gain():
    # relu: 1/√(1/2) = √2 (He); linear: 1; selu: 1 by construction of its constants (its N(0,1)
    # fixed point, Klambauer et al. 2017); tanh: 1/√E[tanh(z)²] ≈ 1.5925 (differs from torch's 5/3).
    assert T.preserving_gain("relu") == pytest.approx(math.sqrt(2), rel=1e-12)
    assert T.preserving_gain("linear") == pytest.approx(1.0, rel=1e-12)
    assert T.preserving_gain("selu") == pytest.approx(1.0, rel=1e-9)
    assert T.preserving_gain("tanh") == pytest.approx(1.5925, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Mean-field MLP
# ---------------------------------------------------------------------------------------------

KEYS = ("preact_var", "preact_std", "act_mean", "act_std", "dead_frac", "saturated_frac")


def test_he_relu_keeps_q_constant():
    # q₀ = 2·1; q_{l+1} = 2·E[relu(h)²] = 2·q/2 = q (He et al. 2015).
    r = T.mlp_mean_field("relu", 12, 2 / 256 * 256)  # He, relu: Var(w) = 2/fan_in
    assert set(r) == set(KEYS) and all(len(v) == 12 for v in r.values())
    np.testing.assert_allclose(r["preact_var"], 2.0, rtol=1e-12)
    np.testing.assert_allclose(r["preact_std"], math.sqrt(2.0), rtol=1e-12)
    # Hidden layers: E[relu h] = √(2/(2π)), std = √(q/2 - q/(2π)) = √(1 - 1/π); dead half.
    np.testing.assert_allclose(r["act_mean"][:-1], math.sqrt(1 / math.pi), rtol=1e-12)
    np.testing.assert_allclose(r["act_std"][:-1], math.sqrt(1 - 1 / math.pi), rtol=1e-12)
    np.testing.assert_allclose(r["dead_frac"][:-1], 0.5, rtol=1e-14)
    # Last layer is linear: act = the output itself, nothing dead.
    assert r["act_mean"][-1] == 0.0 and r["act_std"][-1] == pytest.approx(math.sqrt(2.0))
    assert r["dead_frac"][-1] == 0.0
    np.testing.assert_array_equal(r["saturated_frac"], 0.0)


def test_relu_dead_fraction_with_bias():
    # P(h ≤ 0) for h ~ N(0.5, 1) is Φ(-0.5) = 0.3085375387259869 (normal table).
    r = T.mlp_mean_field("relu", 2, 1.0, bias=0.5)
    assert r["dead_frac"][0] == pytest.approx(0.3085375387259869, rel=1e-13)


def test_linear_network_multiplies_variance():
    # Linear: q_{l+1} = σw²·q_l, q₀ = σw²·E[x²] → q_l = σw^{2(l+1)}·E[x²].
    r = T.mlp_mean_field("linear", 4, 1.5, input_second_moment=2.0)
    np.testing.assert_allclose(r["preact_var"], 2.0 * 1.5 ** np.arange(1, 5), rtol=1e-12)


def test_per_layer_weight_variances():
    r = T.mlp_mean_field("relu", 3, [4.0, 2.0, 1.0])
    # q₀ = 4; q₁ = 2·4/2 = 4; q₂ = 1·4/2 = 2 (relu halves the second moment).
    np.testing.assert_allclose(r["preact_var"], [4.0, 4.0, 2.0], rtol=1e-12)
    with pytest.raises(ValueError, match="length depth=3"):
        T.mlp_mean_field("relu", 3, [1.0, 2.0])


def test_small_normal_tanh_vanishes():
    # normal:0.01 at width 512: σw² = 0.01²·512 = 0.0512; for small q, E[tanh(h)²] ≈ q, so the
    # variance shrinks by 0.0512 per layer.
    sigma_w2 = 0.01**2 * 512
    r = T.mlp_mean_field("tanh", 10, sigma_w2)
    ratios = r["preact_var"][1:] / r["preact_var"][:-1]
    # First step at q = 0.0512: E[tanh²] = q - 2q² + (17/3)q³ - O(q⁴) (Taylor series of tanh² with
    # E[h⁴] = 3q², E[h⁶] = 15q³), so ratio ≈ 0.0512·0.9125; the truncated series is off by 0.25%.
    q = 0.0512
    assert ratios[0] == pytest.approx(0.0512 * (1 - 2 * q + 17 / 3 * q * q), rel=0.005)
    np.testing.assert_allclose(ratios[3:], 0.0512, rtol=1e-4)  # q < 1e-5 there: 2q < 1e-4
    assert r["act_std"][-2] < 1e-5


def test_exploding_network_overflows_to_inf_without_warnings():
    # relu with normal:1.0 at width 512: σw² = 512, q grows 256× per layer (q_l = 512·256^l), past
    # float64 after ~127 layers. pyproject turns warnings into errors, so this also checks for none.
    r = T.mlp_mean_field("relu", 200, 512.0)
    assert r["preact_var"][10] == pytest.approx(512.0 * 256.0**10, rel=1e-12)
    assert np.isinf(r["preact_var"][-1]) and np.isnan(r["act_std"][-1])
    g = T.mlp_gradient_ratio("relu", 200, 512.0)
    assert np.isnan(g["preact_grad_std"][0])


def test_depth_must_be_positive():
    for depth in (0, -1, 2.5):
        with pytest.raises(ValueError, match="depth"):
            T.mlp_mean_field("tanh", depth, 1.0)
        with pytest.raises(ValueError, match="depth"):
            T.mlp_gradient_ratio("tanh", depth, 1.0)


def test_chi():
    # relu at σw² = 2: χ = 2·P(h > 0) = 1 (critical); linear: χ = σw²; tanh at q→0: χ → σw².
    assert T.chi("relu", 2.0, 1.0) == pytest.approx(1.0, rel=1e-13)
    assert T.chi("linear", 1.3, 5.0) == pytest.approx(1.3, rel=1e-13)
    assert T.chi("tanh", 1.0, 1e-12) == pytest.approx(1.0, rel=1e-10)
    # leaky_relu at b = 0: χ = σw²·(P(h > 0)·1² + P(h ≤ 0)·0.01²) = 2·(0.5 + 0.00005).
    assert T.chi("leaky_relu", 2.0, 3.0) == pytest.approx(2 * (0.5 + 0.5e-4), rel=1e-13)


def test_gradient_ratio_closed_forms():
    # He relu: χ = 1 every layer; E[x²] = 1 for the input and q/2 = 1 for hidden inputs.
    g = T.mlp_gradient_ratio("relu", 6, 2.0)
    np.testing.assert_allclose(g["preact_grad_std"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(g["weight_grad_std"], 1.0, rtol=1e-12)
    # Linear with σw² = 0.5: each step towards the input multiplies grad variance by 0.5.
    g = T.mlp_gradient_ratio("linear", 4, 0.5)
    np.testing.assert_allclose(g["preact_grad_std"], np.sqrt(0.5 ** np.arange(3, -1, -1)), rtol=1e-12)


def test_gradient_ratio_per_layer_linear():
    # Linear, σw² = (2, 3, 5), E[x²] = 2: grad variance picks up σ_{w,l+1}² going down,
    # E[g²] = (3·5, 5, 1); layer inputs have E[x²] = (2, 2·2, 2·2·3); weight grad var = product.
    g = T.mlp_gradient_ratio("linear", 3, [2.0, 3.0, 5.0], input_second_moment=2.0)
    np.testing.assert_allclose(g["preact_grad_std"], np.sqrt([15.0, 5.0, 1.0]), rtol=1e-12)
    np.testing.assert_allclose(g["weight_grad_std"], np.sqrt([30.0, 20.0, 12.0]), rtol=1e-12)


def _simulate_mlp(activation, sigma_w2, seed, width=1000, depth=5, batch=500):
    """Numpy MLP at init: pooled std of each layer's activation (linear output last) and of the
    gradient wrt each pre-activation, for a N(0, 1) output gradient."""
    rng = np.random.default_rng(seed)
    phi, dphi = T.activation_fn(activation), T.activation_derivative(activation)
    weights = [rng.standard_normal((width, width)) * math.sqrt(sigma_w2 / width) for _ in range(depth)]
    x = rng.standard_normal((batch, width))
    act_std, preacts = [], []
    for layer, w in enumerate(weights):
        h = x @ w.T
        preacts.append(h)
        x = phi(h) if layer < depth - 1 else h
        act_std.append(x.std())
    g = rng.standard_normal((batch, width))
    grad_std = [1.0] * depth
    for layer in range(depth - 2, -1, -1):
        g = (g @ weights[layer + 1]) * dphi(preacts[layer])
        grad_std[layer] = g.std()
    return np.array(act_std), np.array(grad_std)


# Tolerances: relative spread of (simulated / predicted) measured over 40 seeds at these sizes.
# tanh (σw² = 1): per-layer sd ≤ 0.25% forward and backward → rtol 1%.
# relu (σw² = 2): forward sd ≈ 0.2%, 1.3%, 2.3%, 3.4%, 4.3% by layer (weights are shared by the
# batch and relu outputs have a common mean, so each layer's scale is a ~width-sample estimate
# that compounds with depth); about 4 sd → rtol 1% + 4.5% per layer. Backward sd ≤ 1.7% → 7%.
@pytest.mark.parametrize(
    "activation, sigma_w2, fwd_rtol, bwd_rtol",
    [
        ("tanh", 1.0, np.full(5, 0.01), 0.01),
        ("relu", 2.0, 0.01 + 0.045 * np.arange(5), 0.07),
    ],
)
def test_mean_field_vs_simulation(activation, sigma_w2, fwd_rtol, bwd_rtol):
    act_std, grad_std = _simulate_mlp(activation, sigma_w2, seed=7)
    predicted = T.mlp_mean_field(activation, 5, sigma_w2)["act_std"]
    predicted_grad = T.mlp_gradient_ratio(activation, 5, sigma_w2)["preact_grad_std"]
    assert np.all(np.abs(act_std / predicted - 1) < fwd_rtol), (act_std, predicted)
    assert np.all(np.abs(grad_std / predicted_grad - 1) < bwd_rtol), (grad_std, predicted_grad)


# ---------------------------------------------------------------------------------------------
# Residual stream
# ---------------------------------------------------------------------------------------------


def test_residual_variance():
    # Var_L = Var_0 + L·v for constant v; cumulative sum for per-block v.
    np.testing.assert_allclose(T.residual_variance(4, 0.25, 1.0), [1.25, 1.5, 1.75, 2.0])
    np.testing.assert_allclose(T.residual_variance(3, [1.0, 0.0, 2.0], 0.5), [1.5, 1.5, 3.5])
    assert T.residual_variance(0, 1.0).shape == (0,)
    with pytest.raises(ValueError, match="n_blocks=3"):
        T.residual_variance(3, [1.0, 2.0])
    with pytest.raises(ValueError):
        T.residual_variance(-1, 1.0)
