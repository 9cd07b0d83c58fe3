// The quiz: one variant per participant (the study's assignment), a practice question with feedback,
// the questions in an order seeded by the participant number, and a JSON answers file at the end.
// Progress is kept in localStorage, so a reload resumes where the participant was.
(function () {
  "use strict";
  var study = window.SANE_STUDY;
  var $ = function (id) { return document.getElementById(id); };
  var state = null;      // {participant, variant, order, index, answers, practice, started}
  var shownAt = null;    // performance.now() when the current question's images were on screen
  var screen = "intro";  // intro | practice | feedback | question | done

  function show(name) {
    ["intro", "question", "done"].forEach(function (id) { $(id).hidden = id !== name; });
  }

  function hash(text) {  // FNV-1a, 32 bit
    var h = 2166136261;
    for (var i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 16777619) >>> 0; }
    return h;
  }

  function random(seed) {  // mulberry32
    return function () {
      seed = (seed + 0x6D2B79F5) >>> 0;
      var t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function shuffled(n, seed) {
    var order = [], next = random(seed);
    for (var i = 0; i < n; i++) order.push(i);
    for (var j = n - 1; j > 0; j--) {
      var k = Math.floor(next() * (j + 1)), t = order[j];
      order[j] = order[k]; order[k] = t;
    }
    return order;
  }

  function storageKey(participant) { return "sane-study-" + study.id + "-p" + participant; }

  function save() {
    try { localStorage.setItem(storageKey(state.participant), JSON.stringify(state)); } catch (e) { /* private mode */ }
  }

  function load(participant) {
    try { return JSON.parse(localStorage.getItem(storageKey(participant)) || "null"); } catch (e) { return null; }
  }

  function variantOf(participant) {
    return study.assignment[(participant - 1) % study.assignment.length];
  }

  function fill(question) {
    var loads = [];
    ["a", "b", "c"].forEach(function (role) { loads.push(setImage($("img-" + role), question[role])); });
    ["b", "c"].forEach(function (role) {
      if (question.saliency) loads.push(setImage($("sal-" + role), question.saliency[role]));
      var list = $("att-" + role);
      list.innerHTML = "";
      ((question.attributes || {})[role] || []).forEach(function (name) {
        var item = document.createElement("li");
        item.textContent = name;
        list.appendChild(item);
      });
    });
    shownAt = null;
    Promise.all(loads).then(function () { shownAt = performance.now(); });
  }

  function setImage(img, src) {
    return new Promise(function (resolve) {
      img.onload = img.onerror = function () { resolve(); };
      img.src = src;
    });
  }

  function elapsed() {
    return shownAt === null ? null : Math.round(performance.now() - shownAt);
  }

  function start(participant) {
    var saved = load(participant);
    if (saved && saved.variant === variantOf(participant)) {
      state = saved;
    } else {
      state = {participant: participant, variant: variantOf(participant),
               order: shuffled(study.questions.length, hash(study.id + ":" + participant)),
               index: 0, answers: [], practice: null, started: new Date().toISOString()};
      save();
    }
    document.body.className = "variant-" + state.variant;
    if (state.index >= study.questions.length) return finish();
    show("question");
    if (state.practice === null) {
      screen = "practice";
      $("progress").textContent = "Practice question (not scored)";
      fill(study.practice);
    } else {
      nextQuestion();
    }
    $("prompt").focus();  // not a button: Enter must not answer by accident (Tab reaches the buttons)
  }

  function nextQuestion() {
    if (state.index >= study.questions.length) return finish();
    screen = "question";
    $("feedback").hidden = true;
    ["answer-b", "answer-c"].forEach(function (id) { $(id).disabled = false; });
    $("progress").textContent = "Question " + (state.index + 1) + " of " + study.questions.length;
    fill(study.questions[state.order[state.index]]);
    $("prompt").focus();
  }

  function answer(choice) {
    var ms = elapsed();
    if (screen === "practice") {
      var right = study.practice.answer;
      state.practice = {choice: choice, correct: choice === right, ms: ms};
      save();
      screen = "feedback";
      ["answer-b", "answer-c"].forEach(function (id) { $(id).disabled = true; });
      $("feedback-text").textContent = (choice === right ? "Right: " : "Not this time: ") +
        "the model matched " + right + " better to A. Now the real questions begin.";
      $("feedback").hidden = false;
      $("continue").focus();
      return;
    }
    if (screen !== "question") return;
    var question = study.questions[state.order[state.index]];
    state.answers.push({triplet: question.id, choice: choice, ms: ms, position: state.index + 1,
                        at: new Date().toISOString()});
    state.index += 1;
    save();
    nextQuestion();
  }

  function result() {
    return {format: "sane-study-answers/1", study: study.id, participant: state.participant,
            variant: state.variant, started: state.started, finished: state.finished,
            user_agent: navigator.userAgent, practice: state.practice, answers: state.answers};
  }

  function fileName() { return "answers-" + study.id + "-p" + state.participant + ".json"; }

  function finish() {
    screen = "done";
    if (!state.finished) { state.finished = new Date().toISOString(); save(); }
    show("done");
    $("answers-text").value = JSON.stringify(result(), null, 1);
    $("download").focus();
  }

  function download() {
    var blob = new Blob([JSON.stringify(result(), null, 1)], {type: "application/json"});
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = fileName();
    document.body.appendChild(link);
    link.click();
    link.remove();
    $("saved-name").textContent = "Saved as " + fileName() + " (in your downloads folder).";
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (screen !== "practice" && screen !== "question") return;
    var key = event.key.toLowerCase();
    if (key === "b" || key === "1" || key === "arrowleft") { event.preventDefault(); answer("B"); }
    if (key === "c" || key === "2" || key === "arrowright") { event.preventDefault(); answer("C"); }
  });
  $("answer-b").addEventListener("click", function () { answer("B"); });
  $("answer-c").addEventListener("click", function () { answer("C"); });
  $("continue").addEventListener("click", nextQuestion);
  $("download").addEventListener("click", download);
  $("start-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var participant = parseInt($("participant").value, 10);
    if (!(participant >= 1)) { $("start-error").textContent = "Enter the number you were given (1 or more)."; return; }
    start(participant);
  });

  document.title = study.title;
  $("title").textContent = study.title;
  var given = new URLSearchParams(window.location.search).get("p");
  if (given) $("participant").value = given;
  $("participant").focus();
  if (given) $("start").focus();
  // What this participant will see is only known with the number; say it once it is typed.
  function help() {
    var p = parseInt($("participant").value, 10);
    var variant = p >= 1 ? variantOf(p) : null;
    $("variant-help").textContent = !variant ? "" : variant === "none" ? "You will see the three pictures only." :
      "Beside B and C you will see " + {
        saliency: "a heat map over A: the bright parts are where the model looks in A when comparing it with that picture.",
        attributes: "a short list of properties of A that the model's explanation says make A match that picture.",
        both: "a heat map over A (bright: where the model looks in A when comparing it with that picture) and a short list " +
              "of properties of A that the explanation says make A match that picture."}[variant];
  }
  $("participant").addEventListener("input", help);
  help();
}());
