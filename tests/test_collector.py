"""
The garbage collector settings sharqd runs with (sharqd/tap.py,
CollectorTuning): a burst of 1,000 long-poll answers spent half of its CPU
in collections walking objects that are never garbage.
"""

import gc

from twisted.trial.unittest import TestCase

from sharqd.tap import CollectorTuning


class CollectorTuningTests(TestCase):
    def setUp(self):
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)

    def test_start_freezes_what_exists_and_collects_less_often(self):
        """When the service starts, the objects that exist are out of the
        collector's reach and young collections are rarer; cycles made
        afterwards are still collected."""
        CollectorTuning().startService()
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(gc.get_threshold()[0], CollectorTuning.YOUNG_THRESHOLD)

        class Node:
            pass
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        self.assertGreaterEqual(gc.collect(), 2)
