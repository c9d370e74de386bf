"""The registration portal in a real browser (headless Chromium through chromedriver).

Usage: portal_e2e.py PORTAL_URL LABEL_PNG THING_ONLINE THING_TYPED CODE_TYPED [SPKI_SHA256]
With SPKI_SHA256 (base64 of the SHA-256 of the portal certificate's public key) Chromium
accepts that one key in place of a certificate from its own roots (our endpoint CA is not
one of them); every other certificate error still stops it.
Prints one JSON object per step on stdout; exits non-zero on the first failure.
"""

import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, label_png, thing_photo, thing_typed, code_typed = sys.argv[1:6]
spki = sys.argv[6] if len(sys.argv) > 6 else None


def step(name, **kw):
    print(json.dumps({"step": name, **kw}), flush=True)


def check(cond, what):
    if not cond:
        step("FAILED", what=what, url=driver.current_url, page=driver.page_source[:3000])
        driver.quit()
        sys.exit(1)


opts = Options()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]:
    opts.add_argument(a)
if spki:
    opts.add_argument(f"--ignore-certificate-errors-spki-list={spki}")
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(30)


def by_id(i):
    return driver.find_element(By.ID, i)


def eventually(cond, timeout=15):
    """Clicks return before the next page has loaded: poll."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return True
        except Exception:
            pass  # the page is being replaced
        time.sleep(0.2)
    return False


def wait_state(state, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if by_id("state").get_attribute("data-state") == state:
                return True
        except Exception:
            pass
        time.sleep(0.3)
    return False


# Sign up.
driver.get(url + "/signup")
by_id("email").send_keys("owner@example.com")
by_id("password").send_keys("correct horse battery")
by_id("submit").click()
check(eventually(lambda: driver.current_url.endswith("/devices")), "sign-up lands on my devices")
check(by_id("empty").is_displayed(), "no devices yet")
if url.startswith("https:"):
    check(driver.execute_script("return window.isSecureContext && location.protocol === 'https:'"),
          "the portal is a secure context")
    cookie = driver.get_cookie("claimlink_session") or {}
    check(cookie.get("secure") is True and cookie.get("httpOnly") is True, f"session cookie {cookie}")
step("signed up")

# A wrong claim code is refused with a reason.
by_id("thing").send_keys(thing_typed)
by_id("code").send_keys("0000-0000-0000-0000")
by_id("add").click()
check(eventually(lambda: by_id("error").get_attribute("data-code") == "ClaimCodeWrong"), "wrong code refused")
step("wrong code refused")

# Add by photo of the QR label: claimed, then the page follows the device until it is online.
by_id("photo").send_keys(label_png)
by_id("scan").click()
check(eventually(lambda: f"/devices/{thing_photo}" in driver.current_url), "the photo's device is claimed")
started = time.time()
check(wait_state("online"), "the device comes online in the OEM account")
step("online", thing=thing_photo, seconds=round(time.time() - started, 2))

# Add by typing ID and code of a device that is off: it waits.
driver.get(url + "/devices")
by_id("thing").send_keys(thing_typed)
by_id("code").send_keys(code_typed)
by_id("add").click()
check(eventually(lambda: f"/devices/{thing_typed}" in driver.current_url), "typed device claimed")
check(eventually(lambda: by_id("state").get_attribute("data-state") == "waiting"), "an offline device waits")
step("typed device waiting")

# Sign out; a wrong password is refused; the right one shows both devices.
driver.get(url + "/devices")
by_id("signout").click()
check(eventually(lambda: driver.current_url.endswith("/signin")), "signed out")
by_id("email").send_keys("owner@example.com")
by_id("password").send_keys("wrong password!")
by_id("submit").click()
check(eventually(lambda: "Wrong e-mail or password" in by_id("error").text), "wrong password refused")
driver.get(url + "/signin")
by_id("email").send_keys("owner@example.com")
by_id("password").send_keys("correct horse battery")
by_id("submit").click()
check(eventually(lambda: driver.current_url.endswith("/devices") and by_id("devices")), "signed in")
rows = {r.get_attribute("data-thing"): r for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-thing]")}
check(set(rows) == {thing_photo, thing_typed}, "my devices lists both")
check(rows[thing_photo].find_element(By.CSS_SELECTOR, "td.online") is not None, "the running device is online")
check(rows[thing_typed].find_elements(By.CSS_SELECTOR, "td.offline"), "the other is offline")
step("my devices")

# Release the running device.
rows[thing_photo].find_element(By.CSS_SELECTOR, "button.release").click()
deadline = time.time() + 15
remaining = None
while time.time() < deadline:
    try:
        remaining = [r.get_attribute("data-thing") for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-thing]")]
        if remaining == [thing_typed]:
            break
    except Exception:
        pass  # the page is being replaced
    time.sleep(0.2)
check(remaining == [thing_typed], "released device gone from my list")
step("released", thing=thing_photo)
driver.quit()
