"""Tools for the people who write the course, not for learners: labs generated from solutions
(`slm-course labs`), notebook hygiene checks, and `slm-course store-outputs`."""
