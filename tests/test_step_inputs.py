"""Balancer inputs as ``StepInputs``: what a balancer ``requires`` is checked when its class is created, against
what the pre-training module ``provides`` when the loss aggregation is set up, and is what its step receives."""

import dataclasses
from functools import partial

import lightning as L
import pytest
import torch
from test_one_backward import MM_SMALL, POS_TINY, _mm_batch, _pos_batch

from models.bert import PosBert
from models.multimae import MultiMAE
from pretrain.aggregation import LossAggregation
from pretrain.balancers import Balancer, ExcessMTL, GradNorm, StepInputs, Vanilla
from pretrain.balancers.base import STEP_INPUTS
from pretrain.mm_mae import MMMAEPretraining
from pretrain.pos_bert import PosBertPretraining
from utils.errors import ConfigError


class Recorder(Balancer):
    """Uniform weights; keeps the StepInputs of every call. ``requires`` is set per instance."""

    def __init__(self, num_tasks: int, requires=frozenset()) -> None:
        super().__init__(num_tasks)
        self.requires = frozenset(requires)
        self.calls: list[StepInputs] = []

    def compute_weights(self, values, known, inputs):
        self.calls.append(inputs)
        return torch.full_like(values, 1.0 / self.num_tasks)


def test_step_inputs_are_the_six_documented_fields_and_frozen():
    assert STEP_INPUTS == {"losses", "present", "counts", "shared_params", "features", "feature_grads"}
    inputs = StepInputs(torch.zeros(2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.counts = torch.ones(2)


def test_a_requires_naming_no_step_input_fails_when_the_class_is_created_or_handed_over():
    with pytest.raises(
        TypeError,
        match=r"^Typo\.requires must be a set of StepInputs fields \(counts, .*\), not 'feature'\.$",
    ):

        class Typo(Balancer):
            requires = frozenset({"counts", "feature"})

    with pytest.raises(
        TypeError, match=r"^Typo\.requires must be a set of .*, not 'counts'\.$"
    ):  # a str, no set
        type("Typo", (Balancer,), {"requires": "counts"})
    with pytest.raises(TypeError, match=r"^Recorder\.requires must be a set of .*, not 'count'\.$"):
        LossAggregation(
            Recorder(2, {"count"}), ["a", "b"]
        )  # set per instance: checked when it is handed over


def test_the_aggregation_gives_exactly_the_required_inputs():
    """A balancer requiring counts gets the global counts and nothing it did not ask for; one requiring the
    shared parameters gets those (the very tensors passed), and no counts."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = {"a": ((w * 3).sum(), 3), "b": (w.sum(), 1)}
    counting = Recorder(2, {"counts"})
    LossAggregation(counting, ["a", "b"])(None, losses, shared_params=[w], features=w)
    (got,) = counting.calls
    assert got.counts.tolist() == [3.0, 1.0] and got.present.tolist() == [True, True]
    assert torch.allclose(got.losses, torch.tensor([3.0, 3.0]))  # the mean of each task's targets
    assert got.shared_params is got.features is got.feature_grads is None
    shared = Recorder(2, {"shared_params"})
    LossAggregation(shared, ["a", "b"])(None, losses, shared_params=[w], features=w)
    assert shared.calls[0].shared_params[0] is w and shared.calls[0].counts is None


class NoFeatures(L.LightningModule):
    """A module whose step passes only the shared parameters (it declares so in ``provides``)."""

    provides = frozenset({"shared_params"})

    def __init__(self, balancer):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)
        self.aggregator = LossAggregation.build(balancer, ["a", "b"])
        self.steps = 0

    def configure_callbacks(self):
        return [self.aggregator]

    def training_step(self, batch, i):
        self.steps += 1
        out = self.layer(batch[0]).pow(2).sum(0)
        return self.aggregator(self, {"a": out[0], "b": out[1]}, shared_params=list(self.layer.parameters()))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(module, tmp_path):
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module)


@pytest.mark.parametrize(
    "balancer, fix",
    [
        (partial(GradNorm, mode="features"), "set balancer.mode=shared_params"),
        (partial(Recorder, requires={"features", "feature_grads"}), r"choose a balancer that needs only"),
    ],
)
def test_a_balancer_needing_what_the_module_does_not_provide_fails_at_setup(tmp_path, balancer, fix):
    module = NoFeatures(balancer)
    with pytest.raises(ConfigError, match=r"^balancer \w+ needs the step input (feature_grads and )?features, "
                       r"which NoFeatures does not pass to the loss aggregation \(the step gives counts, losses, "
                       rf"present, shared_params\); {fix}.*, or use a pre-training module that passes"):  # fmt: skip
        _fit(module, tmp_path)
    assert module.steps == 0  # before any step


def test_a_pretraining_module_refuses_such_a_balancer_when_it_is_built():
    """The project's modules hand their ``provides`` to the aggregation as they build it: the mistake surfaces at
    construction, before any data is prepared."""
    from models.convex import ParameterVector
    from pretrain.convex import ConvexPretraining

    needs = partial(
        Recorder, requires={"feature_grads"}
    )  # the convex step passes theta itself, no row gradients
    with pytest.raises(ConfigError, match=r"^balancer Recorder needs the step input feature_grads, which "
                       r"ConvexPretraining does not pass"):  # fmt: skip
        ConvexPretraining(ParameterVector(3), needs, num_tasks=2)
    ConvexPretraining(ParameterVector(3), partial(GradNorm, mode="shared_params"), num_tasks=2)  # provided


def test_balancers_needing_only_what_the_module_provides_train(tmp_path):
    for balancer in (
        Vanilla,
        partial(GradNorm, mode="shared_params"),
        partial(ExcessMTL, mode="shared_params"),
    ):
        module = NoFeatures(balancer)
        _fit(module, tmp_path)
        assert module.steps == 2


def test_a_module_providing_a_name_that_is_no_step_input_fails():
    agg = LossAggregation(Vanilla(2), ["a", "b"])
    with pytest.raises(
        TypeError, match=r"^Mine\.provides must be a set of StepInputs fields .*, not 'feats'\."
    ):
        agg.check_inputs({"shared_params", "feats"}, "Mine")


def _pos_step(balancer):
    module = PosBertPretraining(PosBert(**POS_TINY), balancer, nsp="task")
    module.training_step(_pos_batch(), 0)
    return module


def _mm_step(balancer):
    module = MMMAEPretraining(MultiMAE(**MM_SMALL), balancer, {})
    module.training_step(_mm_batch(), 0)
    return module


def _convex_step(balancer):
    from data.convex import ConvexDataModule
    from models.convex import ParameterVector
    from pretrain.convex import ConvexPretraining

    dm = ConvexDataModule(num_tasks=3, dim=4, sigma=0.5, batch_size=4, train_size=16, seed=0)
    module = ConvexPretraining(ParameterVector(4), balancer, num_tasks=3)
    module.prepare_for_finetune(dm)
    module.training_step(next(iter(dm.train_dataloader())), 0)
    return module


BASE = {"losses", "present"}  # counts only to a balancer that requires them


@pytest.mark.parametrize(
    "step, requires, given",
    [
        (_pos_step, PosBertPretraining.provides, BASE | {"shared_params", "feature_grads"}),
        (_mm_step, MMMAEPretraining.provides, BASE | {"shared_params", "features"}),
        (_mm_step, {"features"}, BASE | {"feature_grads"}),
        (_convex_step, {"shared_params", "features"}, BASE | {"shared_params", "features"}),
    ],
)
def test_each_pretraining_module_passes_what_it_provides(step, requires, given):
    """A balancer requiring what a module declares in ``provides`` passes the setup check and gets those inputs
    at the module's real training step: ``features`` as the plain representation (MM-MAE beside the shared
    parameters; the convex theta) or as its per-task gradients from one backward (PoS-BERT's rows, MM-MAE's
    copies)."""
    recorders = []

    def make(num_tasks):
        recorders.append(Recorder(num_tasks, requires))
        return recorders[-1]

    module = step(make)
    module.aggregator.check_inputs(type(module).provides, type(module).__name__)
    (got,) = recorders[0].calls
    assert {f for f in STEP_INPUTS if getattr(got, f) is not None} == given
