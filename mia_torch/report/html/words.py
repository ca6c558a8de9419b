"""Plain words for the report's readers: what each attack does, what the model served, who the attacker is.

Everything here reads the composed config that ``results.json`` records (``config``) as data:
nothing is built or imported from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["AttackWords", "attack_words", "output_words", "threat_words"]

_STATISTICS = {
    "loss": "the model's loss on the record (how wrong it is)",
    "confidence": "the model's confidence in the record's true class",
    "entropy": "how uncertain the model's output is (entropy)",
    "modified_entropy": "a mix of confidence and uncertainty (Song and Mittal's modified entropy)",
}


@dataclass(frozen=True)
class AttackWords:
    """One attack as the page describes it: its config name, what it does and which references it uses."""

    name: str
    does: str
    references: str


def _class_name(config: Mapping[str, Any]) -> str:
    return str(config.get("_target_", "")).rsplit(".", 1)[-1]


def _what_it_does(config: Mapping[str, Any]) -> str:
    kind = _class_name(config)
    if kind == "ThresholdAttack":
        statistic = str(config.get("statistic", ""))
        return f"Flags a record when {_STATISTICS.get(statistic, statistic)} crosses a threshold set on the " \
               "reference models (Yeom et al. 2018)."
    described = {
        "LiRA": "Compares the model's confidence on the record with how reference models behave on it "
                "(the likelihood-ratio attack, Carlini et al. 2022).",
        "RMIA": "Compares how likely the model finds the record with how likely it finds other population records, "
                "relative to the reference models (Zarifzadeh et al. 2024).",
        "ShokriAttack": "A small neural network trained on the reference models' outputs to recognise training "
                        "records (Shokri et al. 2017).",
        "PopulationAttack": "Flags a record whose loss is lower than that of most population records (a baseline "
                            "that needs no reference models trained per record).",
        "GapAttack": "Flags every record the model classifies correctly (uses only the predicted label).",
        "LabelOnlyAttack": "Uses only predicted labels: how robustly the model keeps a record's label under small "
                           "changes to the record (Choquette-Choo et al. 2021).",
    }
    return described.get(kind, f"An attack defined outside mia_torch ({config.get('_target_', 'unknown class')}).")


def attack_words(name: str, config: Mapping[str, Any] | None) -> AttackWords:
    """How the page describes attack ``name`` configured as ``config`` (the ``attack.<name>`` section)."""
    config = config if isinstance(config, Mapping) else {}
    online = bool(config.get("online"))
    references = ("online: also uses reference models that trained on the record" if online
                  else "offline: uses only reference models that never saw the record")
    if _class_name(config) in ("ThresholdAttack", "PopulationAttack", "GapAttack"):
        references = "uses the reference models only to set its threshold"
    elif _class_name(config) == "ShokriAttack":
        references = "learns from the reference models' own training and unseen records, never from the model under test"
    return AttackWords(name=name, does=_what_it_does(config), references=references)


def output_words(output: Mapping[str, Any] | None) -> str:
    """What the model returns to whoever queries it, from the ``output`` config section."""
    output = output if isinstance(output, Mapping) else {}
    name = output.get("name", "logits")
    served = {
        "logits": "its full output: a score for every class",
        "topk": f"only its {output.get('k', 'k')} highest class probabilities",
        "label": "only the predicted label",
        "round": f"its class probabilities rounded to {output.get('decimals', '?')} decimals",
        "temperature": f"its class probabilities softened by a temperature of {output.get('t', '?')}",
    }
    return served.get(name, f"its output through the output defense {name!r}")


def threat_words(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(term, plain description)`` pairs of the threat model: who the attacker is and what they knew."""
    queries = config.get("queries") or ["identity"]
    shared = config.get("threat_model", "shared") != "disjoint"
    models = config.get("num_models", "several")
    dataset = (config.get("dataset") or {}).get("name", "the dataset")
    defense = (config.get("defense") or {}).get("name", "none")
    references = (f"{models} models in all, each trained by the attacker on a random half of the same population "
                  f"({dataset}); a record's references are the other models, except the target's complementary twin "
                  "(threat_model=shared)") if shared else \
        (f"{models} models in all; the attacker's reference models train on their own half of {dataset}, which never "
         "overlaps the target's data (threat_model=disjoint, Shokri et al.)")
    return [
        ("Who the attacker is", "Someone who can send records to the model and read its answers, and who knows how "
                                "it was built (the kind of data, the architecture and the training recipe), but not "
                                "which records it was trained on."),
        ("What the model returns", f"{output_words(config.get('output')).capitalize()}."),
        ("How each record is queried", f"{len(queries)} view(s) of the record: {', '.join(map(str, queries))}."),
        ("The attacker's reference models", references + "."),
        ("Defense in training", "none" if defense == "none" else f"{defense}"
         + (" (differentially private training)" if defense == "dpsgd" else "")),
    ]
