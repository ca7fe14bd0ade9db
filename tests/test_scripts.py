"""
The text sharqd sends for each queue script (sharqd/queue/lua/__init__.py):
the statements of common.lua it uses, directly or through another, then
its own file.  The queue rule tests run every script; these check the cut.
"""

from sharqd.queue.lua import library_text, script_text


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


def test_library_makes_the_prelude_functions_once():
    """When the scripts are one function library, each of common.lua's
    functions is defined once, at library level, and each operation's
    callback assigns the per-call names it uses (NOW, the key names)
    before its own text; an unshared script (lock.lua) is its file alone."""
    name, text, functions = library_text([("enqueue", True, ()), ("dequeue", True, ()),
                                          ("lock", False, ())])
    assert text.startswith(b"#!lua name=" + name.encode() + b"\n")
    assert text.count(b"local function take_one(") == 1
    dequeue = text[text.index(b"function_name='%s'" % functions["dequeue"].encode()):]
    assert dequeue.index(b"\nNOW = ") < dequeue.index(b"\nK_READY = ") < \
        dequeue.index(b"if type_policy().type_paused")
    lock = text[text.index(b"function_name='%s'" % functions["lock"].encode()):]
    assert lock.split(b"\n", 1)[1].startswith(b"-- The requeue lock.")  # unshared: as it is


def test_library_name_follows_its_text():
    """When any script of the library changes (here its flags), the library
    and every function get other names: two versions never share one."""
    first = library_text([("enqueue", True, ())])
    second = library_text([("enqueue", True, ("allow-oom",))])
    assert first[0] != second[0]
    assert all(f.startswith(first[0] + "_") for f in first[2].values())
