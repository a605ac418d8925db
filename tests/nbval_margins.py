"""nbval with a margin for printed numbers, so that the lessons' committed outputs hold on every CPU.

Strict `pytest --nbval` compares a fresh run's outputs with the committed ones as text. Floating point is not
the same on every machine: another CPU vendor, SIMD width, BLAS kernel or thread count adds and multiplies in
another order, and a float32 result moves in its last bits. Printed at 4 decimals, such a number sometimes moves
by one unit in its last digit. This plugin lets it, and nothing more:

* the text around the numbers must be the same (runs of spaces count as one, so a column may shift);
* an integer (no decimal point, no exponent) must be the same: counts, shapes, steps and indices are exact;
* a decimal may differ from the committed one by one unit in the last digit either of them prints
  (`0.1234` vs `0.1235`; `3.36e+08` vs `3.37e+08`), never more;
* a cell tagged `nbval-margin-X` (for example `nbval-margin-0.05`) allows its decimals to differ by up to X.
  That is for numbers a training run produces, which another CPU's rounding sends along another path; the cell
  asserts the claim they support (a loss below a bound, a gate open) with its own margin, so the claim is
  checked wherever the digits land.

Everything else is nbval's: outputs that differ beyond the margin fail with nbval's own report, and the
`nbval-ignore-output` tag and the sanitize file (tests/sanitize.cfg: timings, memory addresses) work as before.
The plugin is loaded for every pytest run from pyproject.toml (`-p tests.nbval_margins`); without `--nbval` it
does nothing. tests/test_nbval_margins.py tests it.
"""
from __future__ import annotations

import copy
import re
from collections import defaultdict

NUMBER = re.compile(r"([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)")
MARGIN_TAG = re.compile(r"^nbval-margin-(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)$")


def last_digit_unit(number: str) -> float | None:
    """One unit in the last printed digit of a decimal (`0.1234` -> 1e-4, `3.36e+08` -> 1e6); None for an integer."""
    mantissa, _, exponent = number.lower().partition("e")
    if "." not in mantissa and not exponent:
        return None
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def numbers_agree(committed: str, fresh: str, margin: float = 0.0) -> bool:
    """Two printed numbers agree: integers exactly; decimals to one unit in the last digit, or to `margin`."""
    unit_a, unit_b = last_digit_unit(committed), last_digit_unit(fresh)
    if unit_a is None and unit_b is None:
        return committed.lstrip("+") == fresh.lstrip("+")
    if unit_a is None or unit_b is None:
        return False  # `3` against `3.0`: the text changed, not a rounding
    allowed = max(min(unit_a, unit_b), margin)
    return abs(float(committed) - float(fresh)) <= allowed * (1 + 1e-9)


def texts_agree(committed: str, fresh: str, margin: float = 0.0) -> bool:
    """The same text with the same numbers, each within its margin (see the module docstring)."""
    parts_a, parts_b = NUMBER.split(committed), NUMBER.split(fresh)
    if len(parts_a) != len(parts_b):
        return False
    for i, (a, b) in enumerate(zip(parts_a, parts_b)):
        if i % 2:  # odd parts are the numbers
            if not numbers_agree(a, b, margin):
                return False
        elif re.sub(" +", " ", a) != re.sub(" +", " ", b):  # the words between the numbers
            return False
    return True


def cell_margin(cell) -> float:
    """The margin a cell's tag asks for (`nbval-margin-0.05` -> 0.05), or 0."""
    for tag in cell.get("metadata", {}).get("tags", []):
        found = MARGIN_TAG.match(tag)
        if found:
            return float(found.group(1))
    return 0.0


def _slots(outputs, skip_compare):
    """(key, holder, field) for every compared value, in the order nbval pairs them (per key, output order)."""
    slots = defaultdict(list)
    for output in outputs:
        if output.get("output_type") == "stream":
            slots[output["name"]].append((output, "text"))
            continue
        for key, value in output.items():
            if key in skip_compare:
                continue
            if key == "data":
                for mime in value:
                    if mime not in skip_compare:
                        slots[mime].append((value, mime))
            else:
                slots[key].append((output, key))
    return slots


def settle_within_margin(cell_item, test_outputs, ref_outputs, skip_compare):
    """A copy of the fresh outputs in which every value that agrees with the committed one within the margin is
    replaced by the committed one, so that nbval's comparison passes there and reports only what differs."""
    margin = cell_margin(cell_item.cell)
    fresh = copy.deepcopy(test_outputs)
    fresh_slots, ref_slots = _slots(fresh, skip_compare), _slots(ref_outputs, skip_compare)
    for key, refs in ref_slots.items():
        for (holder, field), (ref_holder, ref_field) in zip(fresh_slots.get(key, []), refs):
            new, old = holder[field], ref_holder[ref_field]
            if isinstance(new, list):
                new = "".join(new)
            if isinstance(old, list):
                old = "".join(old)
            if not (isinstance(new, str) and isinstance(old, str)) or new == old:
                continue
            if texts_agree(cell_item.sanitize(old), cell_item.sanitize(new), margin):
                holder[field] = old
    return fresh


def pytest_configure(config):
    """Wrap nbval's comparison once nbval is loaded (only when --nbval is given do cells get compared)."""
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval is not installed: nothing to wrap
        return
    if getattr(IPyNbCell.compare_outputs, "with_margins", False):
        return
    original = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        skip = skip_compare or self.parent.skip_compare
        test = settle_within_margin(self, test, ref, skip)  # both already coalesced by nbval
        return original(self, test, ref, skip_compare)

    compare_outputs.with_margins = True
    IPyNbCell.compare_outputs = compare_outputs
