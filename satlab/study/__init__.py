"""Robustness studies: methods × seeds × systems × imperfection grids as independent cells.

``satlab study STUDY.yaml`` validates the whole study (spec), runs each pending cell
(cell) in this process or on Dask (runner), keeps one tidy table of the results (table)
and draws the plots and HTML report (report).
"""
