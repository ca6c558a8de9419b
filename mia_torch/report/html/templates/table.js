// Optional: sorting and searching for the page's record tables. Without scripts the tables are complete.
(function () {
  "use strict";
  function sortValue(cell) {
    if (!cell) { return ""; }
    var number = cell.getAttribute("data-sort");
    return number === null ? cell.textContent : parseFloat(number);
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a).localeCompare(String(b));
  }
  function enhance(table, index) {
    var body = table.tBodies[0];
    var headers = table.tHead.rows[0].cells;
    var status = document.createElement("span");
    status.setAttribute("aria-live", "polite");
    var tools = document.createElement("div");
    tools.className = "table-tools";
    var label = document.createElement("label");
    label.textContent = "Search (id or any value): ";
    var input = document.createElement("input");
    input.type = "search";
    input.id = "table-search-" + index;
    label.htmlFor = input.id;
    tools.appendChild(label);
    tools.appendChild(input);
    tools.appendChild(status);
    table.parentNode.parentNode.insertBefore(tools, table.parentNode);
    function count() {
      var shown = 0;
      Array.prototype.forEach.call(body.rows, function (row) { if (!row.hidden) { shown += 1; } });
      status.textContent = shown + " of " + body.rows.length + " rows";
    }
    input.addEventListener("input", function () {
      var query = input.value.trim().toLowerCase();
      Array.prototype.forEach.call(body.rows, function (row) {
        var cells = Array.prototype.map.call(row.cells, function (c) { return c.textContent.toLowerCase(); });
        row.hidden = query !== "" && !cells.some(function (text) { return text === query || text.indexOf(query) >= 0; });
      });
      count();
    });
    Array.prototype.forEach.call(headers, function (th, column) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = th.textContent;
      button.title = "Sort by this column";
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(headers, function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var order = compare(sortValue(a.cells[column]), sortValue(b.cells[column]));
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
    count();
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.records"), enhance);
}());
