"""Property tests: OOM message parsing never raises and never invents a negative figure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memspan.oom.classify import classify_oom_exception, parse_figures

FIGURE_KEYS = ("requested_bytes", "device_total_bytes", "device_free_bytes", "allocated_bytes",
               "reserved_unallocated_bytes")
SIZE = st.builds(
    lambda number, unit: f"{number} {unit}",
    st.one_of(st.integers(min_value=-10, max_value=10**30).map(str),
              st.floats(allow_nan=True, allow_infinity=True).map(str),
              st.from_regex(r"\d{1,40}\.\d{1,40}", fullmatch=True)),
    st.sampled_from(["B", "bytes", "KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB", "TB", "XB"]),
)
FRAGMENTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "CUDA out of memory. ", "HIP ", "XPU ", "MPS backend out of memory ", "membership ",
        "Tried to allocate ", ". GPU ", "GPU 0 has a total capacity of ", " total capacity; ",
        " of which ", " is free. ", "Of the allocated memory ", " is allocated by PyTorch, and ",
        " is reserved by PyTorch but unallocated.", " already allocated; ", " free; ",
        " reserved in total by PyTorch)", "(GPU 1; ", "max allowed: ", "you tried to allocate ",
        "DefaultCPUAllocator: can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED",
        "DataLoader worker (pid 3) is killed by signal: Killed", "\x00", "\x1b[31m", "\u202e",
    ]),
    SIZE,
)
MESSAGES = st.lists(FRAGMENTS, max_size=30).map("".join)


def check_figures(figures: dict[str, int | str]) -> None:
    for key in FIGURE_KEYS:
        if key in figures:
            value = figures[key]
            assert isinstance(value, int) and not isinstance(value, bool) and value >= 0


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_parse_figures_never_raises_and_figures_are_non_negative(message: str) -> None:
    check_figures(parse_figures(message))


@settings(max_examples=200, deadline=None)
@given(MESSAGES, st.sampled_from([RuntimeError, MemoryError, ValueError, OSError]))
def test_classification_never_raises(message: str, error_type: type[Exception]) -> None:
    result = classify_oom_exception(error_type(message))
    for key in FIGURE_KEYS:
        value = getattr(result, key)
        assert value is None or (isinstance(value, int) and value >= 0)
    if result.fragmentation_likely:
        assert result.suggestion and result.requested_bytes is not None
        assert result.reserved_unallocated_bytes is not None
        assert result.reserved_unallocated_bytes >= result.requested_bytes > 0
    if error_type is ValueError or error_type is OSError:
        assert not result.is_oom


@settings(max_examples=20, deadline=None)
@given(st.lists(FRAGMENTS, min_size=1, max_size=4).map("".join),
       st.integers(min_value=1_000, max_value=20_000))
def test_long_repetitive_messages_are_parsed(unit: str, repeat: int) -> None:
    """Long messages made of pattern prefixes: bounded work (the message is cut), no error."""
    check_figures(parse_figures(unit * repeat))
