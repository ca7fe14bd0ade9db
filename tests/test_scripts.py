"""
The text sharqd sends for each queue script (sharqd/queue/lua/__init__.py):
the statements of common.lua it uses, directly or through another, then
its own file.  The queue rule tests run every script; these check the cut.
"""

from sharqd.queue.lua import script_text


def test_a_script_keeps_what_it_uses_through_another():
    """When dequeue uses take_one, which uses gcra_take, both come along,
    in common.lua's order, before dequeue's own text."""
    text = script_text("dequeue")
    take, gcra = text.index(b"local function take_one("), text.index(b"local function gcra_take(")
    assert gcra < take < text.index(b"if type_policy().type_paused")


def test_a_script_leaves_out_what_it_does_not_use():
    """When enqueue neither takes nor finishes jobs, those functions are not
    in its text; the key base it uses is."""
    text = script_text("enqueue")
    assert b"local function finish_job(" not in text
    assert b"local function take_one(" not in text
    assert b"local BASE, GLOBAL, QTYPE = ARGV[1], ARGV[2], ARGV[3]" in text


def test_unshared_script_is_its_own_file_only():
    """When a script does not share the prelude (lock.lua), it is sent as it is."""
    assert script_text("lock", shared=False).startswith(b"-- The requeue lock.")
