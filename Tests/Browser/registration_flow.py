"""The registration page in headless Chromium, as a department contact and a gateway admin use it.

Run by Tests/PosternRegistrationTests/BrowserTests.swift with Debian's /usr/bin/python3 (python3-selenium):
    registration_flow.py BASE_URL ARTIFACT_DIRECTORY
At 1280 and 390 CSS pixels wide it takes full-page screenshots of the request form, the admin's request list
and the history (ARTIFACT_DIRECTORY/<page>-<width>.png), and asserts on each that the page does not scroll
sideways and that the status and action controls are inside the viewport, or inside the box of a table
container that scrolls. Prints BROWSER FLOW OK at the end; any failed check raises.
"""
import os
import sys

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, artifacts = sys.argv[1], sys.argv[2]
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1280,900",
             "--hide-scrollbars", "--lang=en-US"]:
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)
# A click starts a navigation and returns; on a loaded machine the next page can take a moment.
driver.implicitly_wait(20)


def wait_text(element_id, needle):
    def found(d):
        return any(needle in e.text for e in d.find_elements(By.ID, element_id))
    try:
        WebDriverWait(driver, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(found)
    except Exception:
        raise AssertionError("%r never showed %r on %s:\n%s" % (element_id, needle, driver.current_url, driver.page_source))


def wait_path(path):
    try:
        WebDriverWait(driver, 20).until(lambda d: d.current_url.split("?")[0] == base + path)
    except Exception:
        raise AssertionError("expected %s, at %s" % (base + path, driver.current_url))


def viewport(width, height=900):
    """The CSS viewport as a desktop browser of that size has it (no zooming out to fit a phone page)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    inner = driver.execute_script("return window.innerWidth")
    assert inner == width, "viewport is %s wide, not %s" % (inner, width)


# Controls that must be visible without scrolling the page sideways: horizontally inside the viewport, or
# inside the visible box of the scrolling container they sit in.
VISIBILITY = """
const failures = [];
for (const el of document.querySelectorAll(arguments[0])) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) { failures.push(el.id || el.outerHTML.slice(0, 80)); continue; }
  let left = 0, right = window.innerWidth;
  for (let c = el.parentElement; c; c = c.parentElement) {
    const style = getComputedStyle(c);
    if ((style.overflowX === 'auto' || style.overflowX === 'scroll') && c.scrollWidth > c.clientWidth) {
      const cr = c.getBoundingClientRect();
      left = Math.max(left, cr.left); right = Math.min(right, cr.right);
    }
  }
  if (r.left < left - 0.5 || r.right > right + 0.5) failures.push((el.id || el.textContent.trim()) + ' at ' + r.left + '..' + r.right);
}
return [document.querySelectorAll(arguments[0]).length, failures];
"""


def absent(by, selector):
    """True when nothing matches now (without the implicit wait, which is for things that must appear)."""
    driver.implicitly_wait(0)
    try:
        return not driver.find_elements(by, selector)
    finally:
        driver.implicitly_wait(20)


def check_layout(name, width, controls):
    scroll_width = driver.execute_script("return document.documentElement.scrollWidth")
    inner = driver.execute_script("return window.innerWidth")
    assert scroll_width <= inner, "%s at %d px: the page scrolls sideways (scrollWidth %d > innerWidth %d)" % (name, width, scroll_width, inner)
    if controls:
        count, failures = driver.execute_script(VISIBILITY, controls)
        assert count > 0, "%s at %d px: nothing matches %r" % (name, width, controls)
        assert not failures, "%s at %d px: outside the viewport or their scroll container: %s" % (name, width, failures)


def screenshot(name, width, controls=None):
    """Checks the layout at `width`, then saves the whole page (the viewport made as tall as the page)."""
    viewport(width)
    check_layout(name, width, controls)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    viewport(width, min(max(height, 600), 8000))
    check_layout(name, width, controls)
    path = os.path.join(artifacts, "%s-%d.png" % (name, width))
    assert driver.save_screenshot(path), path
    viewport(width)


def both_widths(name, controls=None):
    for width in (1280, 390):
        screenshot(name, width, controls)
    viewport(1280)


def login(user, password):
    driver.get(base + "/login")
    driver.find_element(By.ID, "login").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "submit-login").click()
    wait_text("whoami", user)


def fill(fields):
    for name, value in fields.items():
        element = driver.find_element(By.ID, name)
        element.clear()
        element.send_keys(value)


def set_date(element_id, value):
    # A date input's typing order follows the locale; the value property does not.
    driver.execute_script("arguments[0].value = arguments[1]", driver.find_element(By.ID, element_id), value)


try:
    viewport(1280)
    login("bob", "bob-demo-pass")
    driver.find_element(By.LINK_TEXT, "Register a device").click()
    wait_path("/register")
    # What the form tells a secretary: help under each label, required markers, the right input types.
    for field in ["department", "device", "model", "location", "address", "sender", "contact", "sunset", "justification"]:
        element = driver.find_element(By.ID, field)
        assert element.get_attribute("required") is not None, field + " is not marked required"
        help_text = driver.find_element(By.ID, "help-" + field).text
        assert len(help_text) > 20, field + " has no help: " + help_text
        assert element.get_attribute("aria-describedby") == "help-" + field, field
        label = driver.find_element(By.CSS_SELECTOR, "label[for='%s']" % field)
        assert label.find_elements(By.CSS_SELECTOR, ".req"), field + "'s label has no required marker"
    assert driver.find_element(By.ID, "sunset").get_attribute("type") == "date"
    assert driver.find_element(By.ID, "contact").get_attribute("type") == "email"
    assert driver.find_element(By.ID, "sender").get_attribute("type") == "email"
    assert driver.find_element(By.ID, "device").get_attribute("placeholder").startswith("it-"), "placeholder of another department"
    assert "127.0.0.0/8" in driver.find_element(By.ID, "help-address").text, "campus ranges not in the address help"
    both_widths("register", "#submit-request")

    # Refused on the server: the messages stand next to their fields, and what was typed is kept.
    fill({"device": "it-scanner-9", "model": "Acme ScanMaster 3000", "location": "Computing Centre, room 0.14",
          "address": "192.168.7.7", "sender": "payroll@gmail.com", "contact": "it-helpdesk@example.edu",
          "justification": "No TLS in the firmware; replacement ordered."})
    set_date("sunset", "2027-06-30")
    driver.find_element(By.ID, "submit-request").click()
    wait_text("error-address", "outside the campus networks")
    wait_text("error-sender", "outside the internal domains")
    wait_path("/register")
    assert driver.find_element(By.ID, "sunset").get_attribute("value") == "2027-06-30"
    assert driver.find_element(By.ID, "model").get_attribute("value") == "Acme ScanMaster 3000"
    both_widths("register-refused", "#error-address, #error-sender")
    # Post/redirect/get: a reload shows the form again, without resubmitting it.
    driver.refresh()
    wait_path("/register")
    assert absent(By.CSS_SELECTOR, ".error"), "a reload showed the old messages again"

    fill({"device": "it-scanner-9", "model": "Acme ScanMaster 3000", "location": "Computing Centre, room 0.14",
          "address": "127.0.0.9", "sender": "scanner9@example.edu", "contact": "it-helpdesk@example.edu",
          "justification": "No TLS in the firmware; replacement ordered."})
    set_date("sunset", "2027-06-30")
    driver.find_element(By.ID, "submit-request").click()
    wait_text("notice", "pending")
    wait_path("/devices")
    driver.refresh()
    wait_path("/devices")
    assert absent(By.ID, "notice"), "a reload repeated the submission's notice"
    driver.get(base + "/register")
    fill({"device": "it-copier-7", "model": "Copyfast 9 with a rather long model name that wraps in the table",
          "location": "Main building, room 2.101 (next to the kitchen)", "address": "10.77.0.7",
          "sender": "copier7@example.edu", "contact": "it-helpdesk@example.edu",
          "justification": "Leased until next summer; the vendor offers no firmware with TLS for this model."})
    driver.find_element(By.ID, "submit-request").click()
    wait_text("notice", "it-copier-7")
    driver.find_element(By.ID, "logout").click()

    login("alice", "alice-demo-pass")
    wait_path("/devices")
    wait_text("status-it-copier-7", "pending")
    both_widths("requests", "#requests .status .badge, #requests .actions a")

    # Approve: the list only links to a confirmation page, which says what will happen.
    driver.find_element(By.ID, "approve-it-scanner-9").click()
    wait_text("request-details", "127.0.0.9")
    assert "accepts mail from 127.0.0.9" in driver.find_element(By.TAG_NAME, "main").text
    driver.find_element(By.ID, "confirm-approve").click()
    wait_text("notice", "Approved: it-scanner-9")
    wait_path("/devices")
    driver.find_element(By.ID, "device-it-scanner-9")
    driver.refresh()
    wait_path("/devices")
    assert absent(By.ID, "problem"), "a reload sent the approval again"

    # Reject: the reason is required in the form (and on the server, which the HTTP tests check).
    driver.find_element(By.ID, "reject-it-copier-7").click()
    reason = driver.find_element(By.ID, "reason")
    assert reason.get_attribute("required") is not None
    both_widths("reject", "#confirm-reject")
    reason.send_keys("Use scan to folder <b>instead</b>; see ticket #42.")
    driver.find_element(By.ID, "confirm-reject").click()
    wait_text("notice", "Rejected the request for it-copier-7")
    assert absent(By.ID, "requests"), "decided requests stay in the list"

    # Revoke asks first; Cancel leaves the device registered.
    driver.find_element(By.ID, "revoke-it-scanner-9").click()
    wait_text("device-details", "127.0.0.9")
    driver.find_element(By.ID, "confirm-revoke")
    driver.find_element(By.ID, "cancel").click()
    wait_path("/devices")
    driver.find_element(By.ID, "device-it-scanner-9")

    # The history: both decisions, the reason as text (escaped), searchable.
    driver.find_element(By.ID, "history-link").click()
    wait_path("/history")
    wait_text("history-it-copier-7", "Use scan to folder <b>instead</b>; see ticket #42.")
    assert absent(By.CSS_SELECTOR, "#history b"), "the reason was not escaped"
    both_widths("history", "#history .status .badge")
    driver.find_element(By.ID, "q-device").send_keys("copier")
    driver.find_element(By.ID, "search").click()
    wait_text("result-count", "1 decided request match")
    assert driver.find_elements(By.ID, "history-it-copier-7") and absent(By.ID, "history-it-scanner-9")
    assert driver.find_element(By.ID, "q-device").get_attribute("value") == "copier"
    driver.get(base + "/history?status=approved&department=it&contact=HELPDESK")
    wait_text("result-count", "1 decided request match")
    assert driver.find_elements(By.ID, "history-it-scanner-9") and absent(By.ID, "history-it-copier-7")
    print("BROWSER FLOW OK")
finally:
    driver.quit()
