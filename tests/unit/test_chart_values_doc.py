"""The chart's values table in docs/kubernetes.md is generated from values.yaml and must not drift, and
values.yaml documents every value (scripts/chart_values_doc.py)."""

from __future__ import annotations

from scripts.chart_values_doc import BEGIN, DOC, END, VALUES, documented, undocumented, with_table


def test_docs_values_table_is_the_generated_one() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert BEGIN in doc and END in doc, "docs/kubernetes.md lost its chart values markers"
    assert with_table(doc, VALUES.read_text(encoding="utf-8")) == doc, "run `make docs`"


def test_every_value_is_documented() -> None:
    text = VALUES.read_text(encoding="utf-8")
    assert undocumented(text) == []
    assert {"image.repository", "mode", "priorityClassName", "extraEnv", "events.enabled"} <= documented(
        text
    ).keys()


def test_the_checks_catch_an_undocumented_value_and_a_stale_table() -> None:
    text = VALUES.read_text(encoding="utf-8")
    without = text.replace("  # -- Image pull policy.\n", "")
    assert undocumented(without) == ["image.pullPolicy"]
    assert "image.pullPolicy" not in documented(without)
    doc = DOC.read_text(encoding="utf-8")
    changed = text.replace("# -- Affinity of the pods.", "# -- Affinity of the agent's pods.")
    assert with_table(doc, changed) != doc
