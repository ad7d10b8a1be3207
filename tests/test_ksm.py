"""KSM class queries: centring over classes, unified vs class-specific learnable context."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mllm4wtal.model.ksm import KSM

C, L, WORD, DIM, HIDDEN = 5, 4, 6, 16, 12


def ksm(prompt: str) -> KSM:
    torch.manual_seed(0)
    handcraft = torch.randn(3, WORD) if prompt == "handcraft" else None
    return KSM(WORD, HIDDEN, DIM, n_ctx=2, layers=1, heads=2, prompt=prompt, num_classes=C,
               handcraft=handcraft).eval()


def words(twins: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(C, L, WORD, generator=g)
    mask = torch.ones(C, L, dtype=torch.bool)
    mask[2, 3:] = False  # a shorter description: padding must not count
    if twins:  # classes 0 and 1 described by the same words
        vectors[1] = vectors[0]
    return vectors, mask


@pytest.mark.parametrize("prompt", ["learnable", "class_specific", "handcraft"])
def test_queries_are_centred_unit_vectors_and_background_starts_at_zero(prompt):
    model = ksm(prompt)
    vectors, mask = words()
    with torch.no_grad():
        q = model.queries(vectors, mask)
        assert q.shape == (C + 1, HIDDEN)
        assert torch.allclose(q[:C].norm(dim=1), torch.ones(C), atol=1e-6)
        assert torch.equal(q[C], torch.zeros(HIDDEN))  # (C+1)-th query initialised to 0
        # a component shared by every class (here: a shift of the output bias) is removed
        model.out[1].bias += 3.0
        assert torch.allclose(model.queries(vectors, mask), q, atol=1e-5)
        # padded words do not enter the read-out
        padded = vectors.clone()
        padded[2, 3] = 100.0
        assert torch.allclose(model.queries(padded, mask), q, atol=1e-6)


def test_class_specific_context_separates_classes_with_the_same_words():
    vectors, mask = words(twins=True)
    unified, specific = ksm("learnable"), ksm("class_specific")
    assert unified.ctx is not None and unified.ctx.shape == (2, DIM)
    assert specific.ctx is not None and specific.ctx.shape == (C, 2, DIM)
    with torch.no_grad():
        qu = unified.queries(vectors, mask)
        qs = specific.queries(vectors, mask)
    # one shared context: the same words give the same query; one context per class: not
    assert torch.allclose(qu[0], qu[1], atol=1e-6)
    assert float(F.cosine_similarity(qs[0], qs[1], dim=0)) < 0.99
    # and each class's context gets its own gradient
    specific.train()
    specific.queries(vectors, mask)[:C].pow(3).sum().backward()
    assert specific.ctx.grad is not None
    assert all(float(specific.ctx.grad[c].abs().sum()) > 0 for c in range(C))


def test_handcraft_prompt_has_no_learnable_context():
    model = ksm("handcraft")
    assert model.ctx is None and not any("handcraft" in n for n, _ in
                                         model.named_parameters())
    with pytest.raises(ValueError, match="handcraft"):
        KSM(WORD, HIDDEN, DIM, 2, 1, 2, "handcraft", C)
