"""Synthetic chest CT: a seeded phantom (body, lungs, airways, vessels, lesions) with exact
masks and slice labels, and lesion insertion into real normal lungs."""
