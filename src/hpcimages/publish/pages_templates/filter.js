// The index's filter: no server, no library. Each image (a badge in the matrix, a row in the list) carries its
// facets as data-* attributes; a select narrows them, and the choice is kept in the address (#family=mpi4py) so
// a filtered view can be sent to a user.
"use strict";

function chosen(form) {
  const wanted = {};
  for (const select of form.querySelectorAll("select[data-facet]")) {
    if (select.value) wanted[select.dataset.facet] = select.value;
  }
  return wanted;
}

function matches(element, wanted) {
  return Object.entries(wanted).every(([facet, value]) => element.dataset[facet] === value);
}

function apply(form, remember) {
  const wanted = chosen(form);
  for (const element of document.querySelectorAll(".img")) {
    element.hidden = !matches(element, wanted);
  }
  for (const row of document.querySelectorAll("#grid tr.family-row")) {
    row.hidden = !row.querySelector(".img:not([hidden])");
  }
  const rows = document.querySelectorAll("#list tr.img");
  const shown = [...rows].filter((row) => !row.hidden).length;
  document.getElementById("shown").textContent = `${shown} of ${rows.length} images`;
  document.getElementById("none").hidden = shown > 0 || rows.length === 0;
  if (remember) {  // only a choice made here: an address with a plain anchor (#which-image) keeps it
    const hash = new URLSearchParams(wanted).toString();
    history.replaceState(null, "", hash ? `#${hash}` : window.location.pathname);
  }
}

function restore(form) {
  const given = new URLSearchParams(window.location.hash.slice(1));
  for (const select of form.querySelectorAll("select[data-facet]")) {
    const value = given.get(select.dataset.facet);
    if (value && [...select.options].some((option) => option.value === value)) select.value = value;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("filter");
  if (!form) return;
  restore(form);
  form.addEventListener("change", () => apply(form, true));
  form.addEventListener("reset", () => setTimeout(() => apply(form, true), 0));
  apply(form, false);
});
