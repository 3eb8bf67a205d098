"""The readout found by tracing (initcore.models.readout), on models initcore did not write."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initcore.models import MLP, readout


class Bottleneck(nn.Module):
    """wav2vec2's shape (microsoft/mup issue #4): a width -> 8 projection inside the network, and a head."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(5, width)
        self.down = nn.Linear(width, 8)  # output-shaped, but not what the model outputs
        self.up = nn.Linear(8, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + self.up(torch.tanh(self.down(h)))
        return torch.softmax(self.head(self.norm(h)) * 2.0, dim=-1)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 2), nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.a(h) + self.b(h), "aux": h}


class FunctionalTie(nn.Module):
    """nanoGPT-like, with the tie done in the forward: logits = h @ wte.weight.T."""

    def __init__(self, vocab: int = 11, width: int = 16) -> None:
        super().__init__()
        self.wte, self.mix = nn.Embedding(vocab, width), nn.Linear(width, width)

    def forward(self, idx):
        return F.linear(torch.relu(self.mix(self.wte(idx))), self.wte.weight)


class ModuleTie(FunctionalTie):
    def __init__(self) -> None:
        super().__init__()
        self.lm_head = nn.Linear(16, 11, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        return self.lm_head(torch.relu(self.mix(self.wte(idx))))


def test_the_readout_is_what_produces_the_output_not_what_is_output_shaped() -> None:
    # down is (8, width): by shape alone it would be a readout; the trace stops at head, past norm and softmax.
    assert readout.traced(Bottleneck(), torch.randn(4, 5)) == {"head.weight"}


def test_every_readout_summed_into_the_output_is_found_and_a_dict_output_reads_its_logits() -> None:
    assert readout.traced(TwoHeads(), torch.randn(3, 4)) == {"a.weight", "b.weight"}


def test_a_square_head_is_the_readout_of_an_mlp() -> None:
    model = MLP(8, 8, 3)  # every layer 8 x 8 but the input's: shape does not tell the head
    assert readout.traced(model, torch.randn(2, 8)) == {"layers.2.weight"}


@pytest.mark.parametrize("model_type", [FunctionalTie, ModuleTie])
def test_a_tied_table_is_traced_as_the_readout(model_type) -> None:
    model = model_type()
    assert readout.traced(model, torch.randint(0, 11, (2, 5))) == {"wte.weight"}
    assert readout.tied_names(model) == ({"wte.weight": ("wte.weight", "lm_head.weight")}
                                         if model_type is ModuleTie else {})


def test_an_output_no_parameter_multiplies_has_no_readout() -> None:
    assert readout.traced(nn.Sequential(nn.LayerNorm(4), nn.Tanh()), torch.randn(2, 4)) == set()
    assert readout.traced(nn.Identity(), torch.randn(2, 4)) == set()


def test_tracing_leaves_the_parameters_and_their_grads_untouched() -> None:
    model = Bottleneck()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    readout.traced(model, torch.randn(4, 5))
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in model.named_parameters())


def test_an_output_multiplier_scales_the_module_once_and_comes_off() -> None:
    model = ModuleTie()
    idx = torch.randint(0, 11, (2, 5))
    plain = model(idx)
    readout.set_output_multiplier(model.lm_head, 0.25)
    readout.set_output_multiplier(model.lm_head, 0.5)  # set again: replaced, not stacked
    assert readout.output_multipliers(model) == {"lm_head": 0.5}
    torch.testing.assert_close(model(idx), plain * 0.5)
    readout.remove_output_multipliers(model)
    assert readout.output_multipliers(model) == {}
    torch.testing.assert_close(model(idx), plain)


def test_an_output_without_a_tensor_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no tensor to train on"):
        readout.prediction(("text",))


class ScaledHead(nn.Module):
    """A head whose weight is scaled (and transposed) before the product, as a forward multiplier does."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.w = nn.Linear(4, 16), nn.Parameter(torch.randn(16, 3))

    def forward(self, x):
        return torch.relu(self.body(x)) @ (self.w * 0.5)


def test_a_weight_seen_through_a_scalar_multiplier_is_still_the_readout() -> None:
    assert readout.traced(ScaledHead(), torch.randn(2, 4)) == {"w"}
