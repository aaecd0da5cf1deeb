"""Progress off a terminal: plain whole lines, a bounded number of them, nested bars quiet until they end."""
import io

from hubscout.progress import LineProgress, progress_bar


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_progress_is_a_few_plain_lines():
    out = io.StringIO()
    bar = progress_bar(total=200, desc="forward", unit="img", stream=out)
    assert isinstance(bar, LineProgress)
    for _ in range(200):
        bar.update(1)
    bar.set_postfix(loss="0.123")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert len(lines) == 10  # every 10 %, then the end
    assert lines[0] == "forward: 20/200 img (10%)"
    assert lines[-1].startswith("forward: 200/200 img (100%) in ") and lines[-1].endswith("loss=0.123")


def test_a_nested_bar_prints_only_its_last_line_and_iterables_work():
    out = io.StringIO()
    inner = progress_bar(total=50, desc="forward t1", unit="img", leave=False, stream=out)
    inner.update(25)
    inner.update(25)
    assert out.getvalue() == ""
    inner.close()
    inner.close()
    assert out.getvalue().count("\n") == 1 and "forward t1: 50/50 img (100%)" in out.getvalue()
    out2 = io.StringIO()
    assert list(progress_bar(["a", "b"], desc="specifications", unit="teacher", stream=out2)) == ["a", "b"]
    assert out2.getvalue().splitlines()[-1].startswith("specifications: 2/2 teacher (100%)")


def test_a_new_state_is_reported_once_not_on_every_poll():
    out = io.StringIO()
    bar = LineProgress(total=100, desc="ranking queued", unit="%", stream=out)
    bar.set_description_str("ranking queued")  # unchanged: nothing
    bar.set_description_str("ranking running: teacher 1/3")
    bar.set_description_str("ranking running: teacher 2/3")  # within min_interval: held back
    assert out.getvalue().splitlines() == ["ranking running: teacher 1/3: 0/100 % (0%)"]


def test_on_a_terminal_it_is_tqdm():
    from tqdm.auto import tqdm

    bar = progress_bar(total=3, desc="x", stream=Tty())
    assert isinstance(bar, tqdm)
    bar.close()


def test_the_last_state_is_not_repeated_on_close():
    out = io.StringIO()
    bar = LineProgress(total=100, desc="ranking running", unit="%", stream=out)
    bar.update(100)
    bar.set_description_str("ranking succeeded: done")
    bar.close()
    assert out.getvalue().splitlines() == ["ranking succeeded: done: 100/100 % (100%)"]
