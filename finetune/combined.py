"""Several downstream suites in one run, e.g. Table 2 on real data (``downstream=table2_real``).

:class:`CombinedSuite` builds each suite of ``suites`` (name -> a suite's config, as a ``conf/downstream`` file
would give it), runs them one after the other from the same pre-trained model and returns the union of their
tasks, so results.json has every task under ``downstream/<task>`` and the summary's worst / average are over all
of them. Task names must be distinct across suites. The suites' ``extra_results`` are merged: a key the suites
agree on (or that one suite has) is kept as it is, a key they disagree on becomes ``{suite name: value}``.

The protocol keys (``protocol``, ``train_samples``, ``finetune_seeds``) sit at the top of the config and each
suite's config refers to them (``${downstream.protocol}``), so ``downstream.protocol=...`` changes every suite
and ``downstream.suites.<name>.protocol=...`` one of them. A suite's error names its keys under
``downstream.suites.<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L

from finetune.protocol import DownstreamSuite, check_protocol
from finetune.vision import VisionSuite
from utils.errors import ConfigError, UserError

#: ``downstream.`` as a config key (not inside a path or a longer key)
_KEY = re.compile(r"(?<![\w./-])downstream\.")


@contextmanager
def suite_keys(name: str) -> Iterator[None]:
    """Re-raise a suite's UserError with its config keys spelled as they are under ``downstream.suites.<name>``."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - Hydra wraps a suite's UserError in an InstantiationException
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise type(cause)(_KEY.sub(f"downstream.suites.{name}.", str(cause))) from None


class CombinedSuite(DownstreamSuite):
    """Run every suite of ``suites`` and return all their tasks.

    Args:
        suites: suite name -> its config (``_target_`` and options), built here, in this order.
        protocol / train_samples / finetune_seeds: the adaptation protocol every suite's config refers to
            (``finetune.protocol``); a suite may override its own.
    """

    def __init__(
        self,
        suites: Mapping[str, Any] | None = None,
        protocol: str = "finetune",
        train_samples: Any = None,
        finetune_seeds: Any = (0,),
    ) -> None:
        from hydra.utils import instantiate

        check_protocol(protocol)
        if not suites:
            raise ConfigError("downstream.suites is empty: name at least one downstream suite to run.")
        self.suites: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for name, node in suites.items():
            with suite_keys(name):
                suite = instantiate(node) if isinstance(node, Mapping) else node  # a config, or a built suite
            self.suites[str(name)] = suite
            for task in suite.tasks if isinstance(suite, VisionSuite) else ():
                if task in owner:
                    raise ConfigError(
                        f"downstream.suites.{owner[task]} and downstream.suites.{name} both have a task "
                        f"'{task}'; disable it in one (downstream.suites.{name}.tasks.{task}.enabled=false)."
                    )
                owner[task] = str(name)
        self.extra_results: dict[str, Any] = {}

    def validate(self) -> None:
        """Every suite's start-up check, its errors naming its keys under ``downstream.suites.<name>``."""
        for name, suite in self.suites.items():
            with suite_keys(name):
                suite.validate()

    def run(
        self, pretrained: L.LightningModule, make_trainer: Callable[..., L.Trainer], out_dir: Path
    ) -> dict[str, dict]:
        results: dict[str, dict] = {}
        extras: dict[str, dict[str, Any]] = {}
        for name, suite in self.suites.items():
            with suite_keys(name):
                out = suite.run(pretrained, make_trainer, out_dir)
            clash = sorted(set(out) & set(results))
            if clash:
                raise ConfigError(
                    f"downstream.suites.{name} returns task '{clash[0]}', which another suite has."
                )
            results.update(out)
            for key, value in (getattr(suite, "extra_results", None) or {}).items():
                extras.setdefault(key, {})[name] = value
        self.extra_results = {
            key: next(iter(by_suite.values())) if _all_equal(by_suite.values()) else by_suite
            for key, by_suite in extras.items()
        }
        return results


def _all_equal(values) -> bool:
    values = list(values)
    return all(v == values[0] for v in values[1:])
