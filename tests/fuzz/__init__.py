"""The project's soundness fuzzer.

``strategies`` builds random expression trees and boxes (one generator, driven
either by a seeded ``random.Random`` for long reproducible runs or by hypothesis
for the test suite); ``ground_truth`` certifies each case with the library and
checks every certified number against a 70-digit mpmath evaluation of the same
expression at dense points, locally optimised extremes and pairs straddling
kinks and jumps. ``bench/fuzz_soundness.py`` runs it for minutes;
``tests/test_fuzz_soundness.py`` runs a bounded, derandomised slice and the
regression cases.
"""
