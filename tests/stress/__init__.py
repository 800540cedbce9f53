"""Stress and fault-injection tests (issue 10), marked ``stress``; see conftest.py for figures."""
