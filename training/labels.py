"""The label rules of real-data training sources and the diagnoses they accept.

Plain data (no I/O, no torch): the ``dicom-csv`` source (:mod:`covidct.training.file_sources`)
applies the rules, model cards (:mod:`covidct.training.model_card`) quote their definitions.
"""

from __future__ import annotations

DIAGNOSES = {"covid-19": "covid", "covid19": "covid", "covid": "covid", "cap": "cap", "normal": "normal"}
"""Accepted ``diagnosis`` values (lower-cased) -> canonical diagnosis."""
DIAGNOSIS_NAMES = {"covid": "COVID-19", "cap": "CAP", "normal": "Normal"}
ACCEPTED_DIAGNOSES = ("COVID-19", "CAP", "Normal")
DEFAULT_LABEL_RULE = "covid-vs-rest"
LABEL_RULES = {
    "covid-vs-rest": (
        "COVID-vs-rest: slices a radiologist marked infected in a COVID-19 patient are 1, its slices "
        "marked not infected are 0, its unmarked slices are not used; every slice of CAP and Normal "
        "patients is 0."
    ),
    "three-class": (
        "Three classes per slice: 2 = infected slice of a COVID-19 patient, 1 = infected slice of a "
        "CAP patient, 0 = uninfected slices and every slice of a Normal patient; unmarked slices of "
        "COVID-19/CAP patients are not used."
    ),
    "slice-labels": (
        "Slice label taken from the infected column as is (blank = not used), whatever the "
        "diagnosis; patient label 1 when any slice is infected."
    ),
}
"""Label rules of the dicom-csv source -> the sentence that defines them (model cards)."""
