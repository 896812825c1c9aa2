"""Shared by every test tier.

pytest puts the folder of this file (tests/) on sys.path, so each tier imports the one
table of answers measured on the live kernel, ksm_cases.py, instead of keeping a copy.
"""
