"""``acat view``: the ACAT Explain experience in a web browser, on Slicer's own views (trame-slicer).

Layers (Testing/test_project.py checks them): ACATWeb imports ``slicer``, ``vtk``, ``trame*``,
``ACATSlicerLib`` (the MRML code and the run's controller shared with the Slicer module, written once; a
package of its own in pyproject.toml), ACATLogic and ACATData (the demo case); none of those imports ACATWeb,
and ``acat`` (ACATCli) loads it by name only when ``acat view`` runs. One idea per file:

* `session`   - the viewer's work on one MRML scene, without trame: open a CT, explain it in the
                background (ACATSlicerLib's controller and runner), show results, package a download
* `linked_slices` - the original and the counterfactual view kept on the same slice, zoom and pan
* `summary`   - what the page shows of a result: prediction, probabilities, overlay and view choices
* `plot_svg`  - class probability against optimisation step as a small SVG
* `download`  - the results as a zip (NRRD + report.json), written atomically in a private folder
* `demo_case` - the bundled demo case (the phantom head CT with a left MCA lesion), made on request
* `app`       - the trame application: Slicer views, layouts, the panel, the polling task
* `guard`     - only the page opened from the printed URL may use it: this launch's token, this
                computer's Host, the page's own Origin; one page at a time
* `files`     - which files the page may open: those inside INPUT's folder and the --allow-dir folders
* `limits`    - what a page may make the viewer do: message bytes, view image sizes, RPCs, memory
* `server`    - ``acat view`` itself: options, loopback by default, the URL (with its token) printed
"""
